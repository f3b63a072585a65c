// Tensor-core attention (FlashAttention-2 structure on mma.sync, sm_80+), bfloat16/float16, head
// dims 64, 96, 128. Torch-free launchers; the wrapper (attention.cpp) picks these where
// attention_mma_supported() says so and the device is sm_80+, else the kernels of
// attention_kernels.h.
#pragma once
#include <cuda_runtime.h>

#include "attention_kernels.h"

namespace gencore {
namespace cuda {

// dtype bf16/fp16, D in {64, 96, 128}, q/k/v 16-byte aligned with strides that are multiples of 8
// elements (cp.async moves 16 bytes); for the backward also grad_out.
bool attention_mma_supported(const AttentionParams& p, AttnDtype dtype);
bool attention_backward_mma_supported(const AttentionBackwardParams& p, AttnDtype dtype);

cudaError_t launch_attention_forward_mma(const AttentionParams& p, AttnDtype dtype, cudaStream_t stream);

// Needs p.delta = rowsum(dO * O) (launch_attention_delta) and p.lse from the forward; writes every
// element of p.dq, p.dk, p.dv (no workspace, no atomics: dQ comes from its own kernel).
cudaError_t launch_attention_backward_mma(const AttentionBackwardParams& p, AttnDtype dtype,
                                          cudaStream_t stream);

}  // namespace cuda
}  // namespace gencore
