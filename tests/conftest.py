"""Every test sees the evidence it brings, and leaves the project's records alone:
- auto never calibrates (GENCORE_AUTOTUNE=0) unless a test turns it on, and its cache lives in a
  scratch folder, so what impl="auto" runs does not depend on what earlier runs measured here;
- a developer's own benchmark records (`gencore bench --record`, ~/.cache/gencore/records) must not
  change what impl="auto" runs: the user's records folder is a scratch one;
- benchmark suites run by tests (test_cli's `gencore bench`) write no records.
The variables reach subprocesses."""
import os
import tempfile

import pytest

_scratch = tempfile.mkdtemp(prefix="gencore-tests-")
os.environ["GENCORE_RECORDS_DIR"] = os.path.join(_scratch, "local")
os.environ["GENCORE_CACHE_DIR"] = os.path.join(_scratch, "cache")
os.environ["GENCORE_AUTOTUNE"] = "0"


# ---- CPU ISA paths -------------------------------------------------------------------------------
# gencore._C holds the CPU kernels compiled for DEFAULT, AVX2 and AVX512 and runs the widest this
# CPU has (gencore/_backend.py). The kernel tests (KERNEL_MODULES) run on every path this CPU has,
# ids `[isa=AVX2]`, switched per test with _backend.set_cpu_capability (GENCORE_CPU_CAPABILITY for
# the test's child processes; impl="auto" decides anew, for that path's machine class): one machine
# tests what AVX-512, AVX2 and plain x86-64 machines run. GENCORE_CPU_CAPABILITY set for the whole
# run caps the paths (`GENCORE_CPU_CAPABILITY=AVX2 make test` tests what an AVX2 machine runs).
#
# The widest path runs every kernel test; the narrower paths run all but the few below. Measured
# with pytest --durations on 2 cores shared with other jobs: one path of the kernel modules takes
# 100-150 s (test_attention 60-100, test_check 10-30, test_gumbel_softmax 14-25, test_gan_loss 3-4,
# test_attention_features 2, test_drop_in 0.2), and a narrower path costs about what the widest
# does, so every test on every path would add 200-300 s to the suite on an AVX-512 machine
# (13 minutes in CI). Without the tests below a narrower path takes 35-40 s (half of it
# `gencore check`, kept: every op against float64 golds on that path) and still covers every op,
# forward and backward, each dtype, odd shapes and the few-rows decoding path.
KERNEL_MODULES = {"test_gumbel_softmax", "test_gan_loss", "test_attention", "test_attention_features",
                  "test_drop_in", "test_check"}
WIDEST_ONLY = {
    "test_gumbel_softmax::test_torch_compile_fullgraph",  # 2-22 s: torch.compile's own work
    "test_attention::test_gpu_check_script_smoke",  # 3 s: the GPU script's plumbing
    "test_check::test_check_fails_on_a_wrong_kernel_and_names_it",  # 3-7 s each: a replaced kernel,
    "test_check::test_check_fails_without_the_compiled_core",  # and no kernel at all
}


def _module_name(module) -> str:
    return module.__name__.rpartition(".")[2]


def _runs_on_narrower_paths(item) -> bool:
    params = item.callspec.params
    if any(m.args and m.args[0] is True for m in item.iter_markers("skipif")):
        return False  # skipped here anyway (CUDA cases without a GPU): listed once, on the widest
    if f"{_module_name(item.module)}::{item.originalname}" in WIDEST_ONLY:
        return False
    # Decoding against 5000 keys (53 s of the 60): the 1- and 300-key cases take the same paths.
    return not (item.originalname == "test_flash_rule_decode" and params.get("Sk") == 5000)


def _isa_paths():
    """This CPU's paths up to the one running, widest first (none without the compiled core)."""
    from gencore import _backend
    supported = _backend.supported_cpu_capabilities()
    if not supported:
        return []
    return supported[:supported.index(_backend.cpu_capability()) + 1][::-1]


def pytest_generate_tests(metafunc):
    if _module_name(metafunc.module) not in KERNEL_MODULES:
        return
    paths = _isa_paths()
    if paths:
        metafunc.parametrize("cpu_isa", paths, ids=lambda isa: f"isa={isa}", indirect=True)


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        isa = callspec.params.get("cpu_isa") if callspec else None
        narrower = isa is not None and isa != _isa_paths()[0]
        (drop if narrower and not _runs_on_narrower_paths(item) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(autouse=True)
def cpu_isa(request):
    """The ISA path a kernel test runs on (None outside KERNEL_MODULES)."""
    isa = getattr(request, "param", None)
    from gencore.ops import auto
    if isa is None:
        yield None
        auto.clear()  # what a test's own evidence made auto decide (and its memos keep) ends with it
        return
    from gencore import _backend
    with pytest.MonkeyPatch.context() as mp, _backend.cpu_capability_path(isa):
        mp.setenv("GENCORE_CPU_CAPABILITY", isa)
        auto.clear()  # its decisions belong to a machine class (cpu-avx2, ...): the ISA path's
        yield isa
    auto.clear()
