// gencore._C: every op schema, in one place, plus the build facts the Python side checks.
//
// Kernels register per device: csrc/cpu_dispatch.cpp for the CPU (the kernels of csrc/cpu/, one
// build per ISA), csrc/cuda/<op>.cpp for CUDA; autograd and fake (meta) kernels are registered from
// Python (gencore/ops/_<op>.py).
#include <torch/extension.h>

#include "attention_fast_path.h"
#include "cpu_dispatch.h"

#ifndef GENCORE_SOURCE_HASH
#define GENCORE_SOURCE_HASH "unknown"
#endif
#ifndef GENCORE_TORCH_VERSION
#define GENCORE_TORCH_VERSION "unknown"
#endif
#ifndef GENCORE_CUDA_ARCHS
#define GENCORE_CUDA_ARCHS ""
#endif

TORCH_LIBRARY(gencore, m) {
  // Gumbel-softmax. `seed_offset` is a CPU int64 tensor of two words (Philox key, counter offset)
  // drawn from a torch generator by the Python wrapper. Returns (out, soft): out is the sample
  // (a one-hot when hard); soft is the soft sample that the hard mode's backward needs, and an
  // empty tensor in soft mode (out is then the soft sample itself).
  m.def("gumbel_softmax(Tensor logits, Tensor seed_offset, float tau, bool hard, int dim)"
        " -> (Tensor, Tensor)");
  m.def("gumbel_softmax_backward(Tensor grad, Tensor soft, float tau, int dim) -> Tensor");
  // GAN losses (gencore/ops/_gan_loss.py). kind: 0 bce, 1 hinge, 2 wasserstein, 3 rsgan, 4 ragan;
  // role: 0 discriminator, 1 generator; reduction: 0 none, 1 mean, 2 sum. One pass returns the loss
  // and its gradients with respect to both inputs (for an incoming gradient of one); grad_real is
  // an empty tensor where the loss does not read real_logits (which may then be None).
  m.def("gan_loss(Tensor? real_logits, Tensor fake_logits, int kind, int role, int reduction)"
        " -> (Tensor loss, Tensor grad_real, Tensor grad_fake)");

  // Flash-style attention, layout (B, H, S, D); k/v may have fewer heads (H % H_kv == 0). Causal
  // is aligned bottom-right (query i sees keys j <= i + S_k - S_q); key_padding_mask is bool
  // (B, S_k), True = ignore. The keyword features (gencore/ops/reference/attention.py defines
  // them), each off at its default: window (left, right) in the causal frame, -1 unbounded;
  // softcap (scores -> softcap tanh(scores / softcap)), 0 = none; document_ids integer (B, S),
  // S_q == S_k; attn_mask bool (B or 1, H or 1, S_q, S_k), True = take part; dropout_p on the
  // probabilities with the Philox keep-mask keyed by seed_offset (CPU int64 [seed, offset]).
  // Returns (out, lse): lse is the row logsumexp of the scaled (capped) scores (float32; float64
  // for float64 inputs), -inf for rows that see no key (their out is zero). The backward takes
  // the lse's gradient too (grad_lse, same shape; None = zero): d lse / d scores = P.
  // sinks (H,) floating: attention sinks, per query head a logit that joins every row's softmax
  // sum and not P V; lse counts it (a row that sees no key then has lse = sink, out 0), so the
  // backward, which recomputes P from lse, needs nothing more (the sinks' gradient,
  // -sum P_sink (rowsum(dO * O) - grad_lse), is formed in gencore/ops/_attention.py).
  m.def("attention(Tensor q, Tensor k, Tensor v, Tensor? key_padding_mask, bool causal,"
        " float scale, int window_left=-1, int window_right=-1, float softcap=0.,"
        " Tensor? document_ids=None, Tensor? attn_mask=None, float dropout_p=0.,"
        " Tensor? seed_offset=None, Tensor? sinks=None) -> (Tensor, Tensor)");
  m.def("attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out,"
        " Tensor lse, Tensor? key_padding_mask, bool causal, float scale, int window_left=-1,"
        " int window_right=-1, float softcap=0., Tensor? document_ids=None,"
        " Tensor? attn_mask=None, float dropout_p=0., Tensor? seed_offset=None,"
        " Tensor? grad_lse=None) -> (Tensor, Tensor, Tensor)");
}

namespace {
pybind11::dict build_info() {
  pybind11::dict info;
  info["source_hash"] = GENCORE_SOURCE_HASH;
  info["torch_version"] = GENCORE_TORCH_VERSION;
  info["cpu_capabilities"] = gencore::cpu_dispatch::compiled();  // the CPU kernels' ISAs
  info["cpu_capability"] = gencore::cpu_dispatch::current();     // the one running now
#ifdef GENCORE_WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
  info["cuda_archs"] = GENCORE_CUDA_ARCHS;
  return info;
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "gencore compiled core: fused ops registered under torch.ops.gencore";
  m.def("build_info", &build_info,
        "How this _C was built (sources, torch, CPU ISAs and the one running, CUDA archs)");
  m.def("cpu_capability", &gencore::cpu_dispatch::current,
        "The ISA whose CPU kernels run: DEFAULT, AVX2 or AVX512");
  m.def("supported_cpu_capabilities", &gencore::cpu_dispatch::supported,
        "The ISAs of this build that this CPU runs, narrowest first");
  m.def("set_cpu_capability", &gencore::cpu_dispatch::select, pybind11::arg("name"),
        "Runs the CPU kernels of ISA `name` from now on and returns the previous one; ValueError "
        "for an ISA this build lacks or this CPU cannot run");
  namespace fast = gencore::attention_fast_path;
  m.def("attention_fast_path", &fast::call, pybind11::arg("q"), pybind11::arg("k"), pybind11::arg("v"),
        pybind11::arg("causal"),
        "impl='auto' for a plain attention call: SDPA's output where auto's memo says SDPA, False "
        "where it says gencore's checked path, None where it knows nothing of this call shape");
  m.def("attention_fast_path_remember", &fast::remember, pybind11::arg("q"), pybind11::arg("k"),
        pybind11::arg("v"), pybind11::arg("causal"), pybind11::arg("verdict"),
        "Stores auto's verdict for this call shape: 0 checked path, 1 SDPA, 2 SDPA with is_causal");
  m.def("attention_fast_path_clear", &fast::clear, "Forgets every verdict");
  m.def("attention_fast_path_size", &fast::size, "How many call shapes the memo holds");
  // GENCORE_CPU_CAPABILITY named an ISA that this build lacks or this CPU cannot run: the widest
  // runs instead, and the import says so.
  const std::string warning = gencore::cpu_dispatch::load_warning();
  if (!warning.empty() && PyErr_WarnEx(PyExc_RuntimeWarning, warning.c_str(), 1) < 0) {
    throw pybind11::error_already_set();
  }
}
