// Which ISA's CPU kernels run (csrc/cpu_dispatch.cpp): the widest this CPU runs, chosen when _C
// loads (GENCORE_CPU_CAPABILITY lowers it), and switchable at run time.
#pragma once
#include <string>
#include <vector>

namespace gencore::cpu_dispatch {

// The ISAs this build has CPU kernels for, narrowest first: DEFAULT, then AVX2 and AVX512 (x86-64).
std::vector<std::string> compiled();
// Those of them that this CPU and its OS run.
std::vector<std::string> supported();
// The ISA whose kernels run now.
std::string current();
// Runs the kernels of `name` (any case) from now on and returns the ISA that ran before. Throws
// std::invalid_argument, naming the valid choices, for a name this build lacks or this CPU cannot
// run.
std::string select(const std::string& name);
// Why GENCORE_CPU_CAPABILITY could not be followed at load ("" when it was, or is unset); the
// import of _C turns it into a Python warning.
std::string load_warning();

}  // namespace gencore::cpu_dispatch
