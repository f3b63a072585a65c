"""The compiled core holds the CPU kernels of every ISA, and its AVX code only where the AVX paths
alone reach it.

setup.py compiles csrc/cpu/*.cpp once per ISA (DEFAULT, AVX2, AVX512) into gencore._C, each copy in
a namespace of its own (gencore::AVX2::..., with at::vec::AVX2::...). The inline functions that the
objects share with each other (torch's, std::'s) are kept once, from the first object in the link:
the generic objects and the DEFAULT kernels come first, so the copy that every path calls is plain
x86-64. Were an AVX copy kept, a CPU without AVX would die of an illegal instruction outside any
gencore kernel. This test disassembles the library and fails if a function outside the AVX2/AVX512
namespaces holds an AVX instruction: a VEX/EVEX mnemonic (v...), a ymm/zmm register, or an AVX-512
mask register.

One exception: local copies the compiler makes of a function for one object's callers
(`.constprop.N`, `.isra.N`, `.part.N`, `.cold` clones: in an AVX object, e.g. std::vector<float>'s
constructor specialised for the kernel's calls). They are local symbols, so the linker never hands
them to another object, and only that object's (AVX) code calls them.
"""
import importlib.util
import re
import shutil
import subprocess

import pytest

from gencore import _backend

OBJDUMP = shutil.which("objdump")
# Mangled names: gencore::AVX2 is "7gencore4AVX2", at::vec::AVX512 "3vec6AVX512" (the namespace
# path may be abbreviated before them, never after). Mangled because OpenMP's outlined bodies
# (`..._omp_fn.0`) do not demangle.
AVX_NAMESPACE = re.compile(r"7gencore(?:4AVX2|6AVX512)|3vec(?:4AVX2|6AVX512)")
COMPILER_CLONE = re.compile(r"\.(?:constprop|isra|part)\.\d+|\.cold(?:\.\d+)?$")
AVX_INSTRUCTION = re.compile(r"^\s*[0-9a-f]+:\s+(?:v|k(?:mov|and|or|xor|not|shift|test|unpck|add))\w*\b"
                             r"|%[yz]mm\d|%k[0-7]\b")


def library() -> str:
    if _backend.load() is None:
        pytest.skip(_backend.reason())
    return importlib.util.find_spec("gencore._C").origin


def local_functions(path: str) -> set:
    """Names of the library's local (STB_LOCAL) function symbols."""
    table = subprocess.run([OBJDUMP, "-t", path], capture_output=True, text=True, check=True).stdout
    names = set()
    for line in table.splitlines():
        parts = line.split()
        # "<address> l     F .text  <size>  <name>"
        if len(parts) >= 6 and parts[1] == "l" and parts[2] == "F":
            names.add(parts[-1])
    return names


def avx_outside_isa_namespaces(path: str) -> dict:
    """{function: first AVX instruction} for every function that should hold none."""
    listing = subprocess.run([OBJDUMP, "-d", "--no-show-raw-insn", path], capture_output=True,
                             text=True, check=True).stdout
    local = local_functions(path)
    found, function = {}, None
    for line in listing.splitlines():
        label = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if label:
            function = label.group(1)
            allowed = AVX_NAMESPACE.search(function) or (
                function in local and COMPILER_CLONE.search(function))
            if allowed:
                function = None
        elif function and function not in found and AVX_INSTRUCTION.search(line):
            found[function] = line.strip()
    return found


def demangle(names):
    filt = shutil.which("c++filt")
    if filt is None:
        return list(names)
    out = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True).stdout
    return out.splitlines()


@pytest.mark.skipif(OBJDUMP is None, reason="objdump is not on PATH")
def test_no_avx_outside_the_avx_namespaces():
    found = avx_outside_isa_namespaces(library())
    shown = [f"{name}: {found[raw]}" for raw, name in zip(found, demangle(found))][:20]
    assert not found, (f"{len(found)} functions outside the AVX2/AVX512 namespaces hold AVX code "
                       "(an object compiled with AVX flags comes first in the link, or a kernel "
                       "header lacks GENCORE_NAMESPACE_BEGIN):\n" + "\n".join(shown))


@pytest.mark.skipif(OBJDUMP is None, reason="objdump is not on PATH")
def test_every_isa_has_its_kernels():
    """Each ISA of build_info() has its own copy of every CPU entry point."""
    path = library()
    table = subprocess.run([OBJDUMP, "-t", path], capture_output=True, text=True, check=True).stdout
    for isa in _backend.build_info()["cpu_capabilities"]:
        ns = f"7gencore{len(isa)}{isa}"
        for entry in ("gumbel_softmax_cpu", "gumbel_softmax_backward_cpu", "gan_loss_cpu",
                      "attention_cpu", "attention_backward_cpu"):
            assert f"{ns}{len(entry)}{entry}" in table, f"no gencore::{isa}::{entry} in {path}"
