// Host-side argument checks and readers shared by the CPU and CUDA wrappers of every op.
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <optional>

#include "common/float_type.h"
#include "common/isa_namespace.h"
#include "common/gan_loss.h"
#include "common/philox.h"
#include "common/row_layout.h"

GENCORE_NAMESPACE_BEGIN

// Wraps `dim` into [0, ndim) with a clear error, then views the tensor as (outer, n, inner).
inline RowLayout checked_row_layout(const at::Tensor& t, int64_t dim, const char* op) {
  const int64_t nd = t.dim();
  TORCH_CHECK(nd > 0, op, ": expected a tensor with at least one dimension");
  TORCH_CHECK(dim >= -nd && dim < nd, op, ": dim ", dim, " is out of range for a ", nd,
              "-d tensor (expected ", -nd, " <= dim < ", nd, ")");
  return row_layout(t.sizes().data(), nd, dim < 0 ? dim + nd : dim);
}

// The (seed, offset) pair that the Python side draws from a torch generator.
inline PhiloxKey read_philox_key(const at::Tensor& seed_offset) {
  TORCH_CHECK(seed_offset.device().is_cpu() && seed_offset.scalar_type() == at::kLong &&
                  seed_offset.numel() == 2,
              "seed_offset must be a CPU int64 tensor of two elements (seed, offset), got ",
              seed_offset.scalar_type(), " on ", seed_offset.device(), " with ",
              seed_offset.numel(), " elements");
  const at::Tensor s = seed_offset.contiguous();
  const int64_t* p = s.const_data_ptr<int64_t>();
  return PhiloxKey{static_cast<uint64_t>(p[0]), static_cast<uint64_t>(p[1])};
}

inline void check_floating(const at::Tensor& t, const char* op, const char* name) {
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kBFloat16 || st == at::kHalf, op,
              ": ", name, " must be float32, float64, bfloat16 or float16, got ", st);
}

// The torch-free dtype code every CUDA launcher takes; any other dtype is an error.
inline FloatType float_type_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return FloatType::kFloat32;
    case at::kDouble: return FloatType::kFloat64;
    case at::kBFloat16: return FloatType::kBFloat16;
    case at::kHalf: return FloatType::kFloat16;
    default: TORCH_CHECK(false, "expected float32, float64, bfloat16 or float16, got ", t.scalar_type());
  }
}

// ---- gumbel_softmax / gumbel_softmax_backward -----------------------------------------------------
inline void check_gumbel_softmax(const at::Tensor& logits, double tau) {
  check_floating(logits, "gumbel_softmax", "logits");
  TORCH_CHECK(tau > 0 && std::isfinite(tau), "gumbel_softmax: tau must be a finite number > 0, got ", tau);
}

inline void check_gumbel_softmax_backward(const at::Tensor& grad, const at::Tensor& soft) {
  check_floating(soft, "gumbel_softmax_backward", "soft");
  TORCH_CHECK(grad.sizes() == soft.sizes(), "gumbel_softmax_backward: grad has shape ",
              grad.sizes(), " but the saved sample has shape ", soft.sizes());
  TORCH_CHECK(grad.device() == soft.device(), "gumbel_softmax_backward: grad is on ",
              grad.device(), " but the saved sample is on ", soft.device());
}

// ---- attention / attention_backward ----------------------------------------------------------------
struct AttentionGeometry {
  int64_t B, H, Hkv, Sq, Sk, D;
  int64_t group() const { return H / Hkv; }
  int64_t offset() const { return Sk - Sq; }  // causal: query i sees keys j <= i + offset
};

// attention / attention_backward (CPU and CUDA): dtypes, shapes, GQA, mask; returns the geometry.
inline AttentionGeometry check_attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const c10::optional<at::Tensor>& mask, double scale, const char* op) {
  check_floating(q, op, "q");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), op,
              ": q, k and v must have the same dtype, got ", q.scalar_type(), ", ",
              k.scalar_type(), ", ", v.scalar_type());
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, op,
              ": q, k, v must be 4-d (batch, heads, seq, head_dim), got ", q.dim(), "-d, ",
              k.dim(), "-d, ", v.dim(), "-d");
  AttentionGeometry g{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3)};
  TORCH_CHECK(k.size(0) == g.B && v.size(0) == g.B, op, ": batch sizes differ: q ", g.B, ", k ",
              k.size(0), ", v ", v.size(0));
  TORCH_CHECK(k.size(3) == g.D && v.size(3) == g.D, op, ": head dims differ: q ", g.D, ", k ",
              k.size(3), ", v ", v.size(3));
  TORCH_CHECK(v.size(1) == g.Hkv && v.size(2) == g.Sk, op, ": k and v must have the same heads and"
              " length, got k ", k.sizes(), " and v ", v.sizes());
  TORCH_CHECK(g.Hkv > 0 && g.H % g.Hkv == 0, op, ": q heads (", g.H,
              ") must be a multiple of k/v heads (", g.Hkv, ")");
  TORCH_CHECK(std::isfinite(scale), op, ": scale must be finite, got ", scale);
  if (mask.has_value()) {
    TORCH_CHECK(mask->scalar_type() == at::kBool, op, ": key_padding_mask must be bool, got ",
                mask->scalar_type());
    TORCH_CHECK(mask->dim() == 2 && mask->size(0) == g.B && mask->size(1) == g.Sk, op,
                ": key_padding_mask must have shape (batch, S_k) = (", g.B, ", ", g.Sk, "), got ",
                mask->sizes());
    TORCH_CHECK(mask->device() == q.device(), op, ": key_padding_mask is on ", mask->device(),
                " but q is on ", q.device());
  }
  return g;
}

// ---- gan_loss ---------------------------------------------------------------------------------------
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

// Attention sinks: one logit per query head, (H,) floating, on q's device. Returns them
// contiguous in `acc` (float32; float64 for float64 inputs), or an undefined tensor for none.
inline at::Tensor check_attention_sinks(const c10::optional<at::Tensor>& sinks, const at::Tensor& q,
                                        int64_t H, at::ScalarType acc, const char* op) {
  if (!sinks.has_value()) return at::Tensor();
  TORCH_CHECK(at::isFloatingType(sinks->scalar_type()), op, ": sinks must be floating (float32), got ",
              sinks->scalar_type());
  TORCH_CHECK(sinks->dim() == 1 && sinks->size(0) == H, op,
              ": sinks must have shape (heads,) = (", H, ",), got ", sinks->sizes());
  TORCH_CHECK(sinks->device() == q.device(), op, ": sinks is on ", sinks->device(), ", q on ",
              q.device());
  return sinks->to(acc).contiguous();
}

// The keyword features of attention / attention_backward (window, softcap, documents, attn_mask,
// dropout), checked; the defaults (-1, -1, 0, none, none, 0, none) switch each off.
struct AttentionFeatures {
  int64_t left = -1, right = -1;  // window sides; -1 unbounded
  double softcap = 0.0;           // 0: none
  double dropout_p = 0.0;
  PhiloxKey key{};                // dropout's (seed, offset)
  const int64_t* key_dev = nullptr;  // or, on a CUDA q, [seed, offset] in device memory (CUDA graphs)
  bool documents = false, mask = false;
  bool any() const {
    return left >= 0 || right >= 0 || softcap > 0 || dropout_p > 0 || documents || mask;
  }
};

inline AttentionFeatures check_attention_features(
    const at::Tensor& q, const AttentionGeometry& g, int64_t window_left, int64_t window_right,
    double softcap, const c10::optional<at::Tensor>& document_ids,
    const c10::optional<at::Tensor>& attn_mask, double dropout_p,
    const c10::optional<at::Tensor>& seed_offset, const char* op) {
  AttentionFeatures f;
  TORCH_CHECK(window_left >= -1 && window_right >= -1, op,
              ": window sides must be >= 0, or -1 for unbounded, got (", window_left, ", ",
              window_right, ")");
  f.left = window_left;
  f.right = window_right;
  TORCH_CHECK(std::isfinite(softcap) && softcap >= 0, op,
              ": softcap must be a finite number > 0 (0 = none), got ", softcap);
  f.softcap = softcap;
  TORCH_CHECK(dropout_p >= 0 && dropout_p < 1, op, ": dropout_p must be in [0, 1), got ", dropout_p);
  f.dropout_p = dropout_p;
  if (dropout_p > 0) {
    TORCH_CHECK(seed_offset.has_value(), op, ": dropout_p > 0 needs seed_offset");
    if (seed_offset->is_cuda()) {  // drawn on the device under CUDA-graph capture (gencore/ops/rng.py)
      TORCH_CHECK(q.is_cuda() && seed_offset->device() == q.device() &&
                      seed_offset->scalar_type() == at::kLong && seed_offset->numel() == 2 &&
                      seed_offset->is_contiguous(),
                  op, ": a device seed_offset must be a contiguous int64 tensor of two elements on q's "
                  "device ", q.device(), ", got ", seed_offset->scalar_type(), " on ",
                  seed_offset->device(), " with ", seed_offset->numel(), " elements");
      f.key_dev = seed_offset->const_data_ptr<int64_t>();
    } else {
      f.key = read_philox_key(*seed_offset);
    }
  }
  if (document_ids.has_value()) {
    const auto st = document_ids->scalar_type();
    TORCH_CHECK(at::isIntegralType(st, /*includeBool=*/false), op,
                ": document_ids must be an integer tensor, got ", st);
    TORCH_CHECK(g.Sq == g.Sk, op, ": document_ids needs S_q == S_k, got ", g.Sq, " and ", g.Sk);
    TORCH_CHECK(document_ids->dim() == 2 && document_ids->size(0) == g.B &&
                    document_ids->size(1) == g.Sk,
                op, ": document_ids must have shape (batch, S) = (", g.B, ", ", g.Sk, "), got ",
                document_ids->sizes());
    TORCH_CHECK(document_ids->device() == q.device(), op, ": document_ids is on ",
                document_ids->device(), " but q is on ", q.device());
    f.documents = true;
  }
  if (attn_mask.has_value()) {
    TORCH_CHECK(attn_mask->scalar_type() == at::kBool, op, ": attn_mask must be bool, got ",
                attn_mask->scalar_type());
    TORCH_CHECK(attn_mask->dim() == 4 && (attn_mask->size(0) == 1 || attn_mask->size(0) == g.B) &&
                    (attn_mask->size(1) == 1 || attn_mask->size(1) == g.H) &&
                    attn_mask->size(2) == g.Sq && attn_mask->size(3) == g.Sk,
                op, ": attn_mask must have shape (batch or 1, heads or 1, S_q, S_k) = (", g.B,
                " or 1, ", g.H, " or 1, ", g.Sq, ", ", g.Sk, "), got ", attn_mask->sizes());
    TORCH_CHECK(attn_mask->device() == q.device(), op, ": attn_mask is on ", attn_mask->device(),
                " but q is on ", q.device());
    f.mask = true;
  }
  return f;
}

GENCORE_NAMESPACE_END
