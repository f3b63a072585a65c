"""Builds gencore._C: CPU kernels always (once per vector ISA), CUDA kernels when a CUDA toolchain
and a CUDA build of torch are present (GENCORE_CUDA=1 forces them, GENCORE_CUDA=0 forbids them)."""
import glob
import hashlib
import os
import platform
import shutil
import subprocess

import torch
from packaging.version import Version
from setuptools import find_packages, setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def source_hash() -> str:
    """Hash of every file under csrc/: the package compares it at import to spot a stale build."""
    h = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(ROOT, "csrc", "**", "*"), recursive=True)):
        if os.path.isfile(path):
            h.update(os.path.relpath(path, ROOT).encode())
            h.update(open(path, "rb").read())
    return h.hexdigest()[:16]


# The CPU kernels' ISAs, narrowest first, and the flags each is compiled with: every csrc/cpu/*.cpp
# is compiled once per ISA into the one extension (as ATen compiles its kernels), and
# csrc/cpu_dispatch.cpp runs the widest the CPU has, chosen when the package loads
# (GENCORE_CPU_CAPABILITY=DEFAULT|AVX2|AVX512 narrows it then; see gencore/_backend.py).
ISA_FLAGS = {
    "DEFAULT": [],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"],
}


def cpu_isas() -> list:
    """DEFAULT, plus AVX2 and AVX512 where the build targets x86-64."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        return ["DEFAULT", "AVX2", "AVX512"]
    return ["DEFAULT"]


def want_cuda() -> bool:
    flag = os.environ.get("GENCORE_CUDA")
    if flag is not None:
        return flag == "1"
    has_nvcc = cpp_extension.CUDA_HOME is not None and shutil.which("nvcc") is not None
    return torch.version.cuda is not None and has_nvcc


def cuda_archs() -> str:
    """Arch list baked into the build: TORCH_CUDA_ARCH_LIST if set, else sm_80 and sm_90 (plus the
    local GPU's arch when one is visible)."""
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if not archs:
        archs = "8.0;9.0"
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            local = f"{major}.{minor}"
            if local not in archs.split(";"):
                archs += ";" + local
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    return archs


# Flags applied to every C++ file. Nothing else departs from how torch builds extensions: its own
# C++ standard (torch 2.11 is built as C++17, 2.13 as C++20), its ABI, no ISA flags. Code that
# crosses into torch (TORCH_CHECK messages, autograd, the dispatcher) is then compiled as torch's is.
# OpenMP on every file: at::parallel_for is inline, and one file without it would make the linker's
# pick of its copy serial.
COMMON_CXX = ["-O3", "-fopenmp", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]


class SourceGroup:
    """Source files compiled with flags and macros of their own into build/temp/<name>."""

    def __init__(self, name, sources, cxx=(), macros=()):
        self.name, self.sources = name, list(sources)
        self.cxx, self.macros = list(cxx), list(macros)


class BuildExt(cpp_extension.BuildExtension):
    """torch's BuildExtension, plus per-file flags: each SourceGroup of an extension is compiled
    with its own flags into its own build folder, and its objects join the link after the
    extension's other sources, in the order of the groups."""

    def finalize_options(self):
        super().finalize_options()
        # pip's editable install hands each build a new temporary folder, so every `make build`
        # recompiled everything (2-4 minutes on 2 cores). One folder of our own keeps ninja's
        # objects and log: a rebuild compiles only what changed, and ninja redoes any file whose
        # command line changed (torch or compiler flags).
        self.build_temp = os.path.join(ROOT, "build", "temp")

    def build_extension(self, ext):
        groups = getattr(ext, "source_groups", [])
        grouped = {src for g in groups for src in g.sources}
        ext.sources = [src for src in ext.sources if src not in grouped]
        ext.depends = list(ext.depends) + sorted(grouped)  # a change there relinks
        objects = []
        for g in groups:
            flags = dict(ext.extra_compile_args)
            flags["cxx"] = flags["cxx"] + g.cxx
            objects += self.compiler.compile(
                g.sources, output_dir=os.path.join(self.build_temp, g.name),
                macros=ext.define_macros + g.macros, include_dirs=ext.include_dirs,
                debug=self.debug, extra_postargs=flags, depends=ext.depends)
        # setuptools links the objects of ext.sources first, then extra_objects in this order.
        ext.extra_objects = objects + list(ext.extra_objects or [])
        super().build_extension(ext)


def extension():
    with_cuda = want_cuda()
    isas = cpu_isas()
    cpu_kernels = sorted(glob.glob("csrc/cpu/*.cpp"))
    sources = sorted(glob.glob("csrc/*.cpp")) + cpu_kernels
    # What `gencore info` and the import-time check read; only ops.cpp, so that editing one kernel
    # does not recompile every file.
    facts = [
        ("GENCORE_SOURCE_HASH", f'"{source_hash()}"'),
        ("GENCORE_TORCH_VERSION", f'"{Version(torch.__version__).base_version}"'),
    ]
    defines = []
    if with_cuda:
        archs = cuda_archs()
        sources += sorted(glob.glob("csrc/cuda/*.cpp") + glob.glob("csrc/cuda/*.cu"))
        defines.append(("GENCORE_WITH_CUDA", None))
        facts.append(("GENCORE_CUDA_ARCHS", f'"{archs}"'))
    build_facts = SourceGroup("ops", ["csrc/ops.cpp"], macros=facts)
    # Which ISAs csrc/cpu_dispatch.cpp (compiled with the other sources, no ISA flags) can run.
    defines += [(f"GENCORE_CPU_{isa}", None) for isa in isas if isa != "DEFAULT"]
    # The CPU kernels, once per ISA, each in a namespace of its own (csrc/common/isa_namespace.h)
    # and with at::vec's CPU_CAPABILITY, as torch compiles its own per-ISA kernel files;
    # -ffp-contract=off keeps their float sums in the order the code writes, which the few-rows
    # and tiled attention paths rely on to agree exactly.
    kernels = []
    for isa in isas:
        macros = [("CPU_CAPABILITY", isa)]
        if isa != "DEFAULT":
            macros.append((f"CPU_CAPABILITY_{isa}", None))
        kernels.append(SourceGroup(f"cpu_{isa}", cpu_kernels, ["-ffp-contract=off"] + ISA_FLAGS[isa],
                                   macros))
    # No --use_fast_math: it approximates expf, log1pf and division (the softmax and GAN losses
    # are tested against references at float32 accuracy).
    flags = {"cxx": COMMON_CXX, "nvcc": ["-O3", "-lineinfo"]}
    make = cpp_extension.CUDAExtension if with_cuda else cpp_extension.CppExtension
    ext = make("gencore._C", sources, define_macros=defines, extra_compile_args=flags,
               extra_link_args=["-fopenmp"])
    # Link order: an inline function (torch's, std::'s) compiled into several objects is kept
    # once, from the first object in the link, so the generic objects (the other sources, then
    # ops.cpp) and the DEFAULT kernels come before any AVX object: the copy every path calls is
    # never an AVX one (tests/test_cpu_isa.py checks the library).
    ext.source_groups = [build_facts] + kernels
    return ext


setup(
    packages=find_packages(include=["gencore", "gencore.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExt.with_options(use_ninja=True)},
)
