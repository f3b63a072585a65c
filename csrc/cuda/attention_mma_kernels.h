// Flash attention on tensor cores (FlashAttention-2 structure on mma.sync, sm_80+): bfloat16 and
// float16, head dims 64, 96, 128. The one CUDA attention family; the wrapper (attention.cpp) checks
// the tensors, refuses every other case with a clear error (impl="auto" sends those to SDPA), makes
// the rows meet attention_mma_supported(), allocates outputs and workspaces, and calls these
// torch-free launchers on the current stream.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "../common/float_type.h"

namespace gencore {
namespace cuda {

struct AttentionParams {
  // q (B, H, Sq, D), k/v (B, Hkv, Sk, D): strides in elements of (batch, head, seq); the head dim
  // is contiguous (stride 1).
  const void* q;
  const void* k;
  const void* v;
  int64_t q_stride[3], k_stride[3], v_stride[3];
  const bool* key_padding_mask;  // (B, Sk) contiguous, True = ignore; may be null
  void* out;                     // (B, H, Sq, D) contiguous, q's dtype
  void* lse;                     // (B, H, Sq) float32
  int B, H, Hkv, Sq, Sk, D;
  bool causal;                   // bottom-right: query i sees keys j <= i + Sk - Sq
  double scale;
  // The keyword features (gencore/ops/reference/attention.py defines them). A launch with every
  // one at its default runs the plain kernels, which never read these; any other runs the
  // kernels built with them (kFeat).
  int window_left = -1, window_right = -1;  // keys i + Sk - Sq - left <= j <= i + Sk - Sq + right; -1 unbounded
  float softcap = 0.f;                      // > 0: scores -> softcap tanh(scores / softcap)
  const int64_t* document_ids = nullptr;    // (B, Sk) contiguous (Sq == Sk): keys of the query's document only
  const bool* attn_mask = nullptr;          // True = take part, at b am_stride[0] + h am_stride[1] + i am_stride[2] + j
  int64_t am_stride[3] = {0, 0, 0};         // 0 on a broadcast dim; the key dim contiguous
  float dropout_p = 0.f;                    // > 0: keep where Philox uniform >= dropout_p (float32)
  float dropout_scale = 1.f;                // 1 / (1 - dropout_p), for the kept
  uint64_t seed = 0, rng_offset = 0;        // Philox key of the keep-mask (element ((b H + h) Sq + i) Sk + j)
  const int64_t* seed_offset_dev = nullptr; // or [seed, offset] read from device memory (CUDA-graph replays)
  int am_B = 1, am_H = 1;                   // attn_mask's batch and head sizes (1 where broadcast)
  void* tile_info = nullptr;                // workspace of attention_tile_info_bytes() with documents or attn_mask
  const float* sinks = nullptr;             // (H,) float32 or null: per query head a logit that joins every
                                            // row's softmax sum (attention sinks); lse counts it, the
                                            // backward needs nothing more (P comes from lse)
  bool has_features() const {
    return window_left >= 0 || window_right >= 0 || softcap > 0.f || document_ids != nullptr ||
           attn_mask != nullptr || dropout_p > 0.f;
  }
};

struct AttentionBackwardParams : AttentionParams {
  const void* dout;              // (B, H, Sq, D), strides of (batch, head, seq); head dim contiguous
  int64_t dout_stride[3];
  void* dq;                      // contiguous, shapes of q, k, v, q's dtype
  void* dk;
  void* dv;
  void* delta;                   // workspace: B*H*Sq float32
  const float* grad_lse = nullptr;  // (B, H, Sq) contiguous, the returned lse's gradient; may be null
};

// The dtypes and head dims the kernels are built for (the wrapper's error names them).
bool attention_mma_covers(FloatType dtype, int head_dim);

// attention_mma_covers, and q/k/v 16-byte aligned with strides that are multiples of 8 elements
// (cp.async moves 16 bytes); for the backward also grad_out.
bool attention_mma_supported(const AttentionParams& p, FloatType dtype);
bool attention_backward_mma_supported(const AttentionBackwardParams& p, FloatType dtype);

// The workspace the launches need with document_ids or attn_mask (0 without): per 64 keys the
// range of document ids, per 64 x 64 block of attn_mask whether it has a True entry, so that
// tiles they empty are skipped. The launchers fill it (each launch anew).
size_t attention_tile_info_bytes(const AttentionParams& p);

cudaError_t launch_attention_forward_mma(const AttentionParams& p, FloatType dtype, cudaStream_t stream);

// delta = rowsum(dO * O) - grad_lse (d lse / d scores = P) into p.delta (float32), the first step
// of the backward.
cudaError_t launch_attention_delta(const AttentionBackwardParams& p, FloatType dtype, cudaStream_t stream);

// Needs p.delta (launch_attention_delta) and p.lse from the forward; writes every element of p.dq,
// p.dk, p.dv (no workspace, no atomics: dQ comes from its own kernel).
cudaError_t launch_attention_backward_mma(const AttentionBackwardParams& p, FloatType dtype,
                                          cudaStream_t stream);

}  // namespace cuda
}  // namespace gencore
