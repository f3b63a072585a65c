// The CPU kernels' entry points. Each kernel file defines its op's in its ISA's namespace
// (gencore::DEFAULT, gencore::AVX2, gencore::AVX512: common/isa_namespace.h); csrc/cpu_dispatch.cpp
// registers one CPU kernel per op that calls the entry point of the ISA running.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#include "../common/isa_namespace.h"

namespace gencore::cpu_kernel_types {
// The schemas of csrc/ops.cpp, as C++ function types.
using GumbelSoftmax = std::tuple<at::Tensor, at::Tensor>(const at::Tensor& logits,
                                                         const at::Tensor& seed_offset, double tau,
                                                         bool hard, int64_t dim);
using GumbelSoftmaxBackward = at::Tensor(const at::Tensor& grad, const at::Tensor& soft, double tau,
                                         int64_t dim);
using GanLoss = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const std::optional<at::Tensor>& real, const at::Tensor& fake, int64_t kind, int64_t role,
    int64_t reduction);
using Attention = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& key_padding_mask, bool causal, double scale,
    int64_t window_left, int64_t window_right, double softcap,
    const std::optional<at::Tensor>& document_ids, const std::optional<at::Tensor>& attn_mask,
    double dropout_p, const std::optional<at::Tensor>& seed_offset,
    const std::optional<at::Tensor>& sinks);
using AttentionBackward = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& key_padding_mask,
    bool causal, double scale, int64_t window_left, int64_t window_right, double softcap,
    const std::optional<at::Tensor>& document_ids, const std::optional<at::Tensor>& attn_mask,
    double dropout_p, const std::optional<at::Tensor>& seed_offset,
    const std::optional<at::Tensor>& grad_lse);
}  // namespace gencore::cpu_kernel_types

// Declares the five entry points in the namespace around it (one ISA's).
#define GENCORE_DECLARE_CPU_KERNELS                                                 \
  ::gencore::cpu_kernel_types::GumbelSoftmax gumbel_softmax_cpu;                    \
  ::gencore::cpu_kernel_types::GumbelSoftmaxBackward gumbel_softmax_backward_cpu;   \
  ::gencore::cpu_kernel_types::GanLoss gan_loss_cpu;                                \
  ::gencore::cpu_kernel_types::Attention attention_cpu;                             \
  ::gencore::cpu_kernel_types::AttentionBackward attention_backward_cpu;

#if defined(CPU_CAPABILITY)
GENCORE_NAMESPACE_BEGIN
GENCORE_DECLARE_CPU_KERNELS
GENCORE_NAMESPACE_END
#endif
