// GAN losses: host-side argument checks shared by the CPU and CUDA wrappers.
#pragma once
#include <ATen/ATen.h>

#include <optional>

#include "checks.h"
#include "common/gan_loss.h"

namespace gencore {

inline const char* gan_kind_name(int64_t kind) {
  static const char* names[] = {"bce", "hinge", "wasserstein", "rsgan", "ragan"};
  return kind >= 0 && kind < 5 ? names[kind] : "?";
}

// Validates the arguments of gencore::gan_loss and returns the plan. `real` may be undefined (None)
// where the plan does not read it.
inline gan::Plan check_gan_loss(const std::optional<at::Tensor>& real, const at::Tensor& fake,
                                int64_t kind, int64_t role, int64_t reduction,
                                c10::DeviceType device_type) {
  gan::Plan plan;
  TORCH_CHECK(gan::make_plan(static_cast<int>(kind), static_cast<int>(role), &plan),
              "gan_loss: unknown kind/role codes (", kind, ", ", role,
              "): kind is 0..4 (bce, hinge, wasserstein, rsgan, ragan), role 0..1 "
              "(discriminator, generator)");
  TORCH_CHECK(reduction >= 0 && reduction <= 2, "gan_loss: unknown reduction code ", reduction,
              " (0 none, 1 mean, 2 sum)");
  check_floating(fake, "gan_loss", "fake_logits");
  TORCH_CHECK(fake.device().type() == device_type, "gan_loss: fake_logits is on ", fake.device(),
              " but this kernel runs on ", device_type);
  const bool has_real = real.has_value() && real->defined();
  const char* role_name = role == gan::kDiscriminator ? "discriminator" : "generator";
  TORCH_CHECK(has_real || !plan.uses_real, "gan_loss: kind '", gan_kind_name(kind), "' role '",
              role_name, "' needs real_logits, got None");
  if (has_real) {
    check_floating(*real, "gan_loss", "real_logits");
    TORCH_CHECK(real->scalar_type() == fake.scalar_type(),
                "gan_loss: real_logits and fake_logits must have the same dtype, got ",
                real->scalar_type(), " and ", fake.scalar_type());
    TORCH_CHECK(real->device() == fake.device(),
                "gan_loss: real_logits and fake_logits must be on the same device, got ",
                real->device(), " and ", fake.device());
  }
  if (plan.paired) {
    TORCH_CHECK(real->sizes() == fake.sizes(), "gan_loss: kind '", gan_kind_name(kind),
                "' pairs real and fake logits elementwise, so their shapes must match, got ",
                real->sizes(), " and ", fake.sizes());
  }
  if (reduction == gan::kNoReduction) {
    TORCH_CHECK(plan.elementwise, "gan_loss: reduction 'none' is not defined for kind '",
                gan_kind_name(kind), "' (each term depends on the mean of the other side); "
                "use 'mean' or 'sum'");
    if (plan.uses_real) {
      TORCH_CHECK(real->sizes() == fake.sizes(), "gan_loss: reduction 'none' for the ", role_name,
                  " loss adds the real and fake terms elementwise, so their shapes must match, got ",
                  real->sizes(), " and ", fake.sizes());
    }
  }
  return plan;
}

}  // namespace gencore
