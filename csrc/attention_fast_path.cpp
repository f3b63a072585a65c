// See attention_fast_path.h. The memo is touched only with the GIL held (every entry point is a
// pybind11 function); SDPA runs with it released, as torch's own Python binding does.
#include "attention_fast_path.h"

#include <ATen/PythonTorchFunctionTLS.h>

#include <cstring>
#include <unordered_map>

namespace gencore::attention_fast_path {
namespace {

// Everything auto's verdict depends on for a call without masks or features: the shapes of q and
// k (v's follow k's or SDPA raises), dtype, device, causal, and whether autograd records the call.
struct Key {
  int64_t shape[8];
  int16_t dtype;
  int8_t device;
  int8_t causal;
  int8_t trains;
  bool operator==(const Key& o) const {
    return std::memcmp(shape, o.shape, sizeof shape) == 0 && dtype == o.dtype &&
           device == o.device && causal == o.causal && trains == o.trains;
  }
};

struct KeyHash {
  size_t operator()(const Key& k) const {
    uint64_t h = 1469598103934665603ull;  // FNV-1a over the fields
    auto mix = [&h](uint64_t x) { h = (h ^ x) * 1099511628211ull; };
    for (int64_t s : k.shape) mix(static_cast<uint64_t>(s));
    mix(static_cast<uint64_t>(k.dtype) << 16 | static_cast<uint64_t>(k.device) << 8 |
        static_cast<uint64_t>(k.causal) << 1 | static_cast<uint64_t>(k.trains));
    return static_cast<size_t>(h);
  }
};

// A long generation makes a shape per step: the memo starts over past this many.
constexpr size_t kMaxEntries = 4096;
std::unordered_map<Key, int8_t, KeyHash>& memo() {
  static auto* m = new std::unordered_map<Key, int8_t, KeyHash>();  // never destroyed: no exit-order trouble
  return *m;
}

// False where the call is not a 4-d one the memo speaks for.
bool make_key(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal, Key* key) {
  // SDPA on the CPU does not check every one of these (a v with fewer keys than k runs): the
  // checked path does, with gencore's message.
  if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4 || q.size(3) != k.size(3)) return false;
  for (int i = 0; i < 3; ++i) {
    if (v.size(i) != k.size(i)) return false;
  }
  if (q.scalar_type() != k.scalar_type() || v.scalar_type() != k.scalar_type() ||
      q.device() != k.device() || v.device() != k.device()) {
    return false;
  }
  for (int i = 0; i < 4; ++i) {
    key->shape[i] = q.size(i);
    key->shape[4 + i] = k.size(i);
  }
  key->dtype = static_cast<int16_t>(q.scalar_type());
  key->device = static_cast<int8_t>(q.device().type());
  key->causal = causal;
  key->trains = (q.requires_grad() || k.requires_grad() || v.requires_grad()) &&
                at::GradMode::is_enabled();
  return true;
}

}  // namespace

pybind11::object call(pybind11::handle q_obj, pybind11::handle k_obj, pybind11::handle v_obj,
                      pybind11::handle causal) {
  // Exact torch.Tensor only: a subclass's __torch_function__ must see a Python call.
  static PyTypeObject* const tensor_type = reinterpret_cast<PyTypeObject*>(
      pybind11::object(pybind11::module_::import("torch").attr("Tensor")).release().ptr());
  if (Py_TYPE(q_obj.ptr()) != tensor_type || Py_TYPE(k_obj.ptr()) != tensor_type ||
      Py_TYPE(v_obj.ptr()) != tensor_type) {
    return pybind11::bool_(false);
  }
  if (causal.ptr() != Py_True && causal.ptr() != Py_False) return pybind11::bool_(false);
  // A __torch_function__ mode sees torch's Python calls only: the checked path makes one.
  if (at::impl::torch_function_mode_enabled()) return pybind11::bool_(false);
  const at::Tensor q = q_obj.cast<at::Tensor>(), k = k_obj.cast<at::Tensor>(), v = v_obj.cast<at::Tensor>();
  Key key;
  if (!make_key(q, k, v, causal.ptr() == Py_True, &key)) return pybind11::bool_(false);
  const auto& m = memo();
  auto it = m.find(key);
  if (it == m.end()) return pybind11::none();
  if (it->second == kChecked) return pybind11::bool_(false);
  const bool is_causal = it->second == kSdpaCausal;
  at::Tensor out;
  try {
    pybind11::gil_scoped_release no_gil;
    out = at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, /*dropout_p=*/0.0, is_causal);
  } catch (const c10::Error& e) {  // SDPA's message, as its Python binding gives it (no C++ trace)
    throw std::runtime_error(e.what_without_backtrace());
  }
  return pybind11::cast(std::move(out));
}

void remember(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal,
              int verdict) {
  TORCH_CHECK(verdict == kChecked || verdict == kSdpa || verdict == kSdpaCausal,
              "attention fast path: verdict must be 0 (checked path), 1 (SDPA) or 2 (SDPA, causal), got ",
              verdict);
  Key key;
  if (!make_key(q, k, v, causal, &key)) return;
  auto& m = memo();
  if (m.size() >= kMaxEntries) m.clear();
  m[key] = static_cast<int8_t>(verdict);
}

void clear() { memo().clear(); }

int64_t size() { return static_cast<int64_t>(memo().size()); }

}  // namespace gencore::attention_fast_path
