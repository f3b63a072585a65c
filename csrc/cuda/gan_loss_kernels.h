// GAN losses, CUDA: launch functions (torch-free; see gan_loss_kernels.cu).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "../common/float_type.h"

namespace gencore {
namespace cuda {

struct GanLossArgs {
  const void* real;  // n_real elements (nullptr when the plan does not read it)
  const void* fake;  // n_fake elements
  void* grad_real;   // n_real elements (nullptr when unused)
  void* grad_fake;   // n_fake elements
  void* loss;        // one element, or n_fake for reduction none
  int64_t n_real, n_fake;
  int kind, role, reduction;  // the op's codes (common/gan_loss.h)
};

// Bytes of device workspace launch_gan_loss needs (per-block partial sums); 0 for inputs small
// enough for one block, which need none.
size_t gan_loss_workspace_bytes(const GanLossArgs& a);

// Loss and both gradients on `stream`: one launch up to 16384 elements per side, else one per phase
// (2; ragan 4). Deterministic: fixed-order reductions through `workspace` (no float atomics); no
// host sync, capturable in a CUDA graph. Returns the launch error, if any (cudaErrorInvalidValue
// for an unknown kind/role or dtype).
cudaError_t launch_gan_loss(const GanLossArgs& a, FloatType dtype, void* workspace,
                            cudaStream_t stream);

}  // namespace cuda
}  // namespace gencore
