// GAN losses, CUDA wrapper: checks, device guard, current stream, one launch_gan_loss call.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>

#include "../checks.h"
#include "gan_loss_kernels.h"

namespace gencore {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> gan_loss_cuda(const std::optional<at::Tensor>& real,
                                                             const at::Tensor& fake, int64_t kind,
                                                             int64_t role, int64_t reduction) {
  const gan::Plan p = check_gan_loss(real, fake, kind, role, reduction, c10::DeviceType::CUDA);
  const c10::cuda::OptionalCUDAGuard guard(fake.device());
  const at::Tensor f = fake.contiguous();
  const at::Tensor r = p.uses_real ? real->contiguous() : at::Tensor();
  const bool none = reduction == gan::kNoReduction;
  at::Tensor loss = none ? at::empty(f.sizes(), f.options()) : at::empty({}, f.options());
  at::Tensor gf = at::empty(f.sizes(), f.options());
  at::Tensor gr = p.uses_real ? at::empty(r.sizes(), r.options()) : at::empty({0}, f.options());

  cuda::GanLossArgs a;
  a.real = p.uses_real ? r.const_data_ptr() : nullptr;
  a.fake = f.const_data_ptr();
  a.grad_real = p.uses_real ? gr.mutable_data_ptr() : nullptr;
  a.grad_fake = gf.mutable_data_ptr();
  a.loss = loss.mutable_data_ptr();
  a.n_real = p.uses_real ? r.numel() : 0;
  a.n_fake = f.numel();
  a.kind = static_cast<int>(kind);
  a.role = static_cast<int>(role);
  a.reduction = static_cast<int>(reduction);
  // Small inputs need no workspace; larger ones take it from the caching allocator.
  const size_t ws_bytes = cuda::gan_loss_workspace_bytes(a);
  at::Tensor ws = ws_bytes ? at::empty({static_cast<int64_t>(ws_bytes)}, f.options().dtype(at::kByte))
                           : at::Tensor();
  C10_CUDA_CHECK(cuda::launch_gan_loss(a, float_type_of(f),
                                       ws_bytes ? ws.mutable_data_ptr() : nullptr,
                                       c10::cuda::getCurrentCUDAStream().stream()));
  return {loss, gr, gf};
}

}  // namespace
}  // namespace gencore

TORCH_LIBRARY_IMPL(gencore, CUDA, m) {
  m.impl("gan_loss", &gencore::gan_loss_cuda);
}
