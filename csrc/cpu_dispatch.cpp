// TORCH_LIBRARY_IMPL(gencore, CPU): one kernel per op, forwarding each call to the CPU kernels of
// the ISA running. setup.py compiles csrc/cpu/*.cpp once per ISA (DEFAULT, AVX2, AVX512, each in
// its own namespace: common/isa_namespace.h) and this file once, without ISA flags, as ATen's
// DispatchStub does for its kernels. The ISA running is the widest that this CPU and its OS
// support, unless GENCORE_CPU_CAPABILITY (read when _C loads) names a narrower one;
// gencore._C.set_cpu_capability switches it at run time.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <atomic>
#include <cctype>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "cpu/kernels.h"
#include "cpu_dispatch.h"

namespace gencore::DEFAULT {
GENCORE_DECLARE_CPU_KERNELS
}
#if defined(GENCORE_CPU_AVX2)
namespace gencore::AVX2 {
GENCORE_DECLARE_CPU_KERNELS
}
#endif
#if defined(GENCORE_CPU_AVX512)
namespace gencore::AVX512 {
GENCORE_DECLARE_CPU_KERNELS
}
#endif

namespace gencore::cpu_dispatch {
namespace {

namespace types = cpu_kernel_types;

struct Kernels {
  const char* name;
  bool (*runs_here)();
  types::GumbelSoftmax* gumbel_softmax;
  types::GumbelSoftmaxBackward* gumbel_softmax_backward;
  types::GanLoss* gan_loss;
  types::Attention* attention;
  types::AttentionBackward* attention_backward;
};

bool always() { return true; }

#if defined(GENCORE_CPU_AVX2)
// __builtin_cpu_supports reads CPUID and, for AVX and AVX-512, whether the OS saves those registers
// (XGETBV): a feature the OS disabled reads as absent. The flags setup.py compiles each ISA with
// (f16c and fma included) are the features required here.
bool has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
}
#endif
#if defined(GENCORE_CPU_AVX512)
bool has_avx512() {
  return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
#endif

#define GENCORE_KERNELS(ISA, RUNS_HERE)                                             \
  Kernels {                                                                         \
    #ISA, RUNS_HERE, &ISA::gumbel_softmax_cpu, &ISA::gumbel_softmax_backward_cpu,   \
        &ISA::gan_loss_cpu, &ISA::attention_cpu, &ISA::attention_backward_cpu       \
  }

// Narrowest first.
const Kernels kCompiled[] = {
    GENCORE_KERNELS(DEFAULT, always),
#if defined(GENCORE_CPU_AVX2)
    GENCORE_KERNELS(AVX2, has_avx2),
#endif
#if defined(GENCORE_CPU_AVX512)
    GENCORE_KERNELS(AVX512, has_avx512),
#endif
};

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

const Kernels* find(std::string name) {
  for (char& c : name) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  for (const Kernels& k : kCompiled) {
    if (name == k.name) return &k;
  }
  return nullptr;
}

const Kernels* widest_supported() {
  const Kernels* best = &kCompiled[0];
  for (const Kernels& k : kCompiled) {
    if (k.runs_here()) best = &k;
  }
  return best;
}

std::string g_load_warning;  // defined before g_running: initialised first

// Never throws: this runs while the library loads.
const Kernels* choose_at_load() {
  const Kernels* best = widest_supported();
  const char* env = std::getenv("GENCORE_CPU_CAPABILITY");
  if (env == nullptr || *env == '\0') return best;
  const Kernels* asked = find(env);
  if (asked != nullptr && asked->runs_here()) return asked;
  const std::string why = asked == nullptr
      ? std::string(" is not an ISA of this build (") + join(compiled()) + ")"
      : std::string(": this CPU runs only ") + join(supported());
  g_load_warning = std::string("gencore: GENCORE_CPU_CAPABILITY=") + env + why +
                   "; the CPU kernels run " + best->name + " (the widest this CPU runs)";
  return best;
}

std::atomic<const Kernels*> g_running{choose_at_load()};

const Kernels& running() { return *g_running.load(std::memory_order_acquire); }

// The CPU kernel registered for an op: Forward<&Kernels::attention>::call takes the op's arguments
// and calls the running ISA's attention_cpu with them.
template <auto entry>
struct Forward;
template <typename R, typename... Args, R (*Kernels::*entry)(Args...)>
struct Forward<entry> {
  static R call(Args... args) { return (running().*entry)(args...); }
};

}  // namespace

std::vector<std::string> compiled() {
  std::vector<std::string> names;
  for (const Kernels& k : kCompiled) names.emplace_back(k.name);
  return names;
}

std::vector<std::string> supported() {
  std::vector<std::string> names;
  for (const Kernels& k : kCompiled) {
    if (k.runs_here()) names.emplace_back(k.name);
  }
  return names;
}

std::string current() { return running().name; }

std::string select(const std::string& name) {
  const Kernels* k = find(name);
  if (k == nullptr) {
    throw std::invalid_argument("gencore: '" + name + "' is not an ISA of this build; choose one of " +
                                join(compiled()));
  }
  if (!k->runs_here()) {
    throw std::invalid_argument(std::string("gencore: this CPU cannot run ") + k->name +
                                " code; choose one of " + join(supported()));
  }
  return g_running.exchange(k, std::memory_order_acq_rel)->name;
}

std::string load_warning() { return g_load_warning; }

}  // namespace gencore::cpu_dispatch

TORCH_LIBRARY_IMPL(gencore, CPU, m) {
  using gencore::cpu_dispatch::Forward;
  using gencore::cpu_dispatch::Kernels;
  m.impl("gumbel_softmax", &Forward<&Kernels::gumbel_softmax>::call);
  m.impl("gumbel_softmax_backward", &Forward<&Kernels::gumbel_softmax_backward>::call);
  m.impl("gan_loss", &Forward<&Kernels::gan_loss>::call);
  m.impl("attention", &Forward<&Kernels::attention>::call);
  m.impl("attention_backward", &Forward<&Kernels::attention_backward>::call);
}
