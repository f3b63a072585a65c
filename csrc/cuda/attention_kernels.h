// Flash-style attention, CUDA launchers. Torch-free: raw pointers, sizes, strides, cudaStream_t
// (see DESIGN.md). The wrapper (attention.cpp) checks the tensors, makes the head dim contiguous,
// allocates outputs and workspaces, and calls these on the current stream.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace gencore {
namespace cuda {

enum class AttnDtype { kFloat32, kFloat64, kFloat16, kBFloat16 };

struct AttentionParams {
  // q (B, H, Sq, D), k/v (B, Hkv, Sk, D): strides in elements of (batch, head, seq); the head dim
  // is contiguous (stride 1).
  const void* q;
  const void* k;
  const void* v;
  int64_t q_stride[3], k_stride[3], v_stride[3];
  const bool* key_padding_mask;  // (B, Sk) contiguous, True = ignore; may be null
  void* out;                     // (B, H, Sq, D) contiguous, q's dtype
  void* lse;                     // (B, H, Sq) float32 (float64 for float64)
  int B, H, Hkv, Sq, Sk, D;
  bool causal;                   // bottom-right: query i sees keys j <= i + Sk - Sq
  double scale;
};

struct AttentionBackwardParams : AttentionParams {
  const void* dout;              // (B, H, Sq, D), strides of (batch, head, seq); head dim contiguous
  int64_t dout_stride[3];
  void* dq;                      // contiguous, shapes of q, k, v, q's dtype
  void* dk;
  void* dv;
  void* dq_accum;                // workspace: B*H*Sq*D accumulators (float32; float64 for float64)
  void* delta;                   // workspace: B*H*Sq accumulators
};

cudaError_t launch_attention_forward(const AttentionParams& p, AttnDtype dtype, cudaStream_t stream);
// delta = rowsum(dO * O) into p.delta (accumulation type), the first step of every backward.
cudaError_t launch_attention_delta(const AttentionBackwardParams& p, AttnDtype dtype, cudaStream_t stream);
cudaError_t launch_attention_backward(const AttentionBackwardParams& p, AttnDtype dtype,
                                      cudaStream_t stream);

}  // namespace cuda
}  // namespace gencore
