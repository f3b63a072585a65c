// Gumbel-softmax, CUDA: argument checks, device guard, current stream, then the torch-free
// launchers of gumbel_softmax_kernels.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../checks.h"
#include "gumbel_softmax_kernels.h"

namespace gencore {
namespace {

std::tuple<at::Tensor, at::Tensor> gumbel_softmax_cuda(const at::Tensor& logits,
                                                        const at::Tensor& seed_offset, double tau,
                                                        bool hard, int64_t dim) {
  check_gumbel_softmax(logits, tau);
  // [seed, offset] on the host, or on logits' device where it was drawn under CUDA-graph capture
  // (gencore/ops/rng.py): the kernels read it there at each replay.
  const bool on_device = seed_offset.is_cuda();
  if (on_device)
    TORCH_CHECK(seed_offset.device() == logits.device() && seed_offset.scalar_type() == at::kLong &&
                    seed_offset.numel() == 2 && seed_offset.is_contiguous(),
                "gumbel_softmax: a device seed_offset must be a contiguous int64 tensor of two "
                "elements on logits' device");
  const PhiloxKey key = on_device ? PhiloxKey{0, 0} : read_philox_key(seed_offset);
  const c10::cuda::OptionalCUDAGuard guard(logits.device());
  const at::Tensor x = logits.contiguous();
  const RowLayout L = checked_row_layout(x, dim, "gumbel_softmax");
  at::Tensor out = at::empty(x.sizes(), x.options());
  at::Tensor soft = hard ? at::empty(x.sizes(), x.options()) : at::empty({0}, x.options());
  if (x.numel() == 0) return {out, soft};
  C10_CUDA_CHECK(launch_gumbel_softmax_forward(
      float_type_of(x), x.const_data_ptr(), out.mutable_data_ptr(),
      hard ? soft.mutable_data_ptr() : nullptr, L.outer, L.n, L.inner, key.seed, key.offset, tau,
      hard, c10::cuda::getCurrentCUDAStream(),
      on_device ? seed_offset.const_data_ptr<int64_t>() : nullptr));
  return {out, soft};
}

at::Tensor gumbel_softmax_backward_cuda(const at::Tensor& grad, const at::Tensor& soft, double tau,
                                        int64_t dim) {
  check_gumbel_softmax_backward(grad, soft);
  const c10::cuda::OptionalCUDAGuard guard(soft.device());
  const at::Tensor g = grad.to(soft.scalar_type()).contiguous();
  const at::Tensor y = soft.contiguous();
  const RowLayout L = checked_row_layout(y, dim, "gumbel_softmax_backward");
  at::Tensor dx = at::empty(y.sizes(), y.options());
  if (y.numel() == 0) return dx;
  C10_CUDA_CHECK(launch_gumbel_softmax_backward(float_type_of(y), g.const_data_ptr(),
                                                y.const_data_ptr(), dx.mutable_data_ptr(),
                                                L.outer, L.n, L.inner, tau,
                                                c10::cuda::getCurrentCUDAStream()));
  return dx;
}

}  // namespace
}  // namespace gencore

TORCH_LIBRARY_IMPL(gencore, CUDA, m) {
  m.impl("gumbel_softmax", &gencore::gumbel_softmax_cuda);
  m.impl("gumbel_softmax_backward", &gencore::gumbel_softmax_backward_cuda);
}
