// Launchers of the Gumbel-softmax CUDA kernels: raw pointers, sizes, a stream. No torch.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "../common/float_type.h"

namespace gencore {

// Rows are (outer, n, inner) views of contiguous tensors (common/row_layout.h). `soft` is written
// only when `hard` (it is the straight-through backward's input).
cudaError_t launch_gumbel_softmax_forward(FloatType dtype, const void* logits, void* out, void* soft,
                                          int64_t outer, int64_t n, int64_t inner, uint64_t seed,
                                          uint64_t offset, double tau, bool hard,
                                          cudaStream_t stream,
                                          const int64_t* seed_offset_dev = nullptr);  // or [seed, offset] on the device

cudaError_t launch_gumbel_softmax_backward(FloatType dtype, const void* grad, const void* soft,
                                           void* grad_logits, int64_t outer, int64_t n,
                                           int64_t inner, double tau, cudaStream_t stream);

}  // namespace gencore
