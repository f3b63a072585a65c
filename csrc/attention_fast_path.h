// impl="auto"'s fast path for plain attention calls (gencore/ops/_attention.py): a memo of auto's
// verdict per call shape, read and acted on in C++. A KV-cache decoding step costs SDPA a few
// microseconds; a Python key of shapes, dtype and grad mode cost a fifth of that.
#pragma once
#include <torch/extension.h>

namespace gencore::attention_fast_path {

// What auto decided for a call shape (Python's gencore.ops.attention._fast_verdict).
enum Verdict : int8_t { kChecked = 0, kSdpa = 1, kSdpaCausal = 2 };

// SDPA's output when the memo holds kSdpa / kSdpaCausal for this call, False when it holds
// kChecked or the call is not one the memo speaks for (not exact torch.Tensors, causal not a bool,
// a __torch_function__ mode active, shapes SDPA would not check), None when it holds nothing
// (ask auto, then `remember`).
pybind11::object call(pybind11::handle q, pybind11::handle k, pybind11::handle v, pybind11::handle causal);
// Stores auto's verdict for the call shape of (q, k, v, causal).
void remember(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal,
              int verdict);
// Forgets every verdict (auto cleared its decisions, the ISA changed).
void clear();
// How many call shapes the memo holds.
int64_t size();

}  // namespace gencore::attention_fast_path
