"""Builds gencore._C: CPU kernels always, CUDA kernels when a CUDA toolchain and a CUDA build of
torch are present (GENCORE_CUDA=1 forces them, GENCORE_CUDA=0 forbids them)."""
import glob
import hashlib
import os
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


def cpu_capability() -> str:
    """The widest at::vec ISA this build machine runs: AVX512, AVX2 or DEFAULT.

    gencore is built from source where it runs, so the CPU kernels are compiled for this machine's
    vector width (override with GENCORE_CPU_CAPABILITY=DEFAULT|AVX2|AVX512). The package refuses a
    build whose ISA the running CPU lacks (see gencore/_backend.py)."""
    forced = os.environ.get("GENCORE_CPU_CAPABILITY")
    if forced:
        return forced.upper()
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return "DEFAULT"
    if all(f in flags for f in ("avx512f", "avx512bw", "avx512vl", "avx512dq")):
        return "AVX512"
    if "avx2" in flags and "fma" in flags:
        return "AVX2"
    return "DEFAULT"


ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
    "DEFAULT": [],
}


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


def extension():
    capability = cpu_capability()
    with_cuda = want_cuda()
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    defines = [
        ("GENCORE_SOURCE_HASH", f'"{source_hash()}"'),
        ("GENCORE_TORCH_VERSION", f'"{Version(torch.__version__).base_version}"'),
        ("GENCORE_CPU_CAPABILITY_NAME", f'"{capability}"'),
    ]
    if capability != "DEFAULT":
        defines += [(f"CPU_CAPABILITY_{capability}", None), ("CPU_CAPABILITY", capability)]
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-ffp-contract=off"] + ISA_FLAGS[capability]
    kwargs = dict(extra_link_args=["-fopenmp"])
    if with_cuda:
        archs = cuda_archs()
        sources += sorted(glob.glob("csrc/cuda/*.cpp") + glob.glob("csrc/cuda/*.cu"))
        defines += [("GENCORE_WITH_CUDA", None), ("GENCORE_CUDA_ARCHS", f'"{archs}"')]
        # No --use_fast_math: it approximates expf, log1pf and division (the softmax and GAN losses
        # are tested against references at float32 accuracy).
        nvcc = ["-O3", "-std=c++20", "-lineinfo"]
        return cpp_extension.CUDAExtension(
            "gencore._C", sources, define_macros=defines,
            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)
    return cpp_extension.CppExtension(
        "gencore._C", sources, define_macros=defines, extra_compile_args={"cxx": cxx}, **kwargs)


setup(
    packages=find_packages(include=["gencore", "gencore.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
