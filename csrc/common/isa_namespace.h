// gencore's namespace, and in the CPU kernels one per vector ISA. No torch.
//
// setup.py compiles each CPU kernel file (csrc/cpu/*.cpp) three times into one library, with
// CPU_CAPABILITY=DEFAULT, AVX2 and AVX512 and that ISA's compiler flags, as ATen compiles its own
// kernels. Everything those files define or include from gencore (cpu/*.h, common/*.h, checks.h)
// opens its namespace with GENCORE_NAMESPACE_BEGIN: there, an inline namespace named by the ISA
// inside gencore, so the three copies of an inline function (philox_block, log32, a check) get
// three mangled names (gencore::AVX2::log32, ...) and the linker never keeps an AVX-512 copy for
// the DEFAULT path. Elsewhere (the CUDA kernels and wrappers, csrc/cpu_dispatch.cpp, tests'
// programs) CPU_CAPABILITY is not defined and the code sits in plain gencore::.
#pragma once

#if defined(CPU_CAPABILITY)
#define GENCORE_NAMESPACE_BEGIN \
  namespace gencore {           \
  inline namespace CPU_CAPABILITY {
#define GENCORE_NAMESPACE_END \
  }                           \
  }
#else
#define GENCORE_NAMESPACE_BEGIN namespace gencore {
#define GENCORE_NAMESPACE_END }
#endif
