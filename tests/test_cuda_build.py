"""The CUDA sources compile on a machine without a GPU or a CUDA build of torch.

Every .cu file (csrc/cuda/*.cu: the kernels and their launchers) and every header they include
(csrc/cuda/*.cuh, *_kernels.h, csrc/common/) is torch-free, so `nvcc -c` checks each .cu for sm_80
and sm_90. The thin torch wrappers (csrc/cuda/<op>.cpp) get a syntax check against torch's headers
and the CUDA toolkit's, with a stand-in for the one generated header a CPU build of torch lacks.
"""
import glob
import os
import shutil
import subprocess
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parent.parent
KERNELS = sorted(glob.glob(str(ROOT / "csrc" / "cuda" / "*.cu")))
TORCH_FREE = KERNELS + sorted(glob.glob(str(ROOT / "csrc" / "cuda" / "*.cuh")) +
                              glob.glob(str(ROOT / "csrc" / "cuda" / "*_kernels.h")) +
                              glob.glob(str(ROOT / "csrc" / "common" / "*")))
WRAPPERS = sorted(glob.glob(str(ROOT / "csrc" / "cuda" / "*.cpp")))
NVCC = shutil.which("nvcc")

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")


def cuda_include() -> str:
    """The CUDA toolkit's include directory (the one holding cuda_runtime_api.h)."""
    homes = [cpp_extension.CUDA_HOME, str(Path(NVCC).resolve().parent.parent)]
    homes += sorted(glob.glob("/usr/local/cuda*"), reverse=True)
    for home in filter(None, homes):
        if (Path(home) / "include" / "cuda_runtime_api.h").is_file():
            return str(Path(home) / "include")
    pytest.skip("nvcc found, but not the CUDA toolkit headers")


def test_kernel_files_exist_and_are_torch_free():
    assert KERNELS, "no csrc/cuda/*.cu found"
    for path in TORCH_FREE:
        text = Path(path).read_text()
        for banned in ("#include <torch/", "#include <ATen/", "#include <c10/"):
            assert banned not in text, f"{path} includes a torch header ({banned})"
        # The CPU emulator (tests/cuda_emulator/) runs the kernel files: launches go through
        # launch.cuh's launch_kernel, dynamic shared memory through its dynamic_smem().
        if path.endswith(".cu"):
            assert "<<<" not in text and "extern __shared__" not in text, \
                f"{path}: launch with launch_kernel() and take shared memory from dynamic_smem() (launch.cuh)"


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_kernels_compile(arch, tmp_path):
    def build(src):
        out = tmp_path / (Path(src).stem + ".o")
        cmd = [NVCC, "-c", "-std=c++17", "-O3", f"-arch={arch}", src, "-o", str(out)]
        return src, subprocess.run(cmd, capture_output=True, text=True)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for src, res in pool.map(build, KERNELS):
            assert res.returncode == 0, f"nvcc failed on {src} for {arch}:\n{res.stderr[-4000:]}"


def test_wrappers_parse_against_torch_headers(tmp_path):
    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    includes = [str(tmp_path)] + cpp_extension.include_paths() + [cuda_include(),
                                                                   sysconfig.get_paths()["include"]]
    flags = ["-std=c++17", "-fsyntax-only", "-DGENCORE_WITH_CUDA"] + [f"-I{p}" for p in includes]

    def check(src):
        return src, subprocess.run(["g++", *flags, src], capture_output=True, text=True)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for src, res in pool.map(check, WRAPPERS):
            assert res.returncode == 0, f"{src} does not parse:\n{res.stderr[-4000:]}"
