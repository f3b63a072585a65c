"""Every argument error of the compiled ops, raised on every available device, message checked.

The C++ checks (TORCH_CHECK in csrc/) are called directly through torch.ops.gencore, bypassing the
Python wrappers' own checks. Formatting a message that prints a shape, dtype or device once
crashed the process (a torch/compiler ABI mismatch, issue 11), so the cases run in a child process:
a crash there fails the test and names the case that was running instead of killing the suite.
`test_every_check_has_a_case` keeps the table complete as checks are added to csrc/.
"""
import glob
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
ops = torch.ops.gencore
T = torch.tensor


def _so():
    return T([1, 2], dtype=torch.long)  # a valid (seed, offset)


def _qkv(dev, dtype=torch.float32, B=1, H=2, Hkv=2, Sq=4, Sk=4, D=8, Dk=None):
    Dk = D if Dk is None else Dk
    return (torch.randn(B, H, Sq, D, device=dev, dtype=dtype),
            torch.randn(B, Hkv, Sk, Dk, device=dev, dtype=dtype),
            torch.randn(B, Hkv, Sk, Dk, device=dev, dtype=dtype))


def _bwd_args(dev, **over):
    q, k, v = _qkv(dev)
    args = dict(grad_out=torch.randn_like(q), q=q, k=k, v=v, out=torch.randn_like(q),
                lse=torch.zeros(1, 2, 4, device=dev), mask=None, causal=False, scale=0.5)
    args.update(over)
    return tuple(args.values())


def _mask(dev, shape=(1, 4), dtype=torch.bool):
    return torch.zeros(shape, device=dev, dtype=dtype)


# (name, devices it applies to, call, what the message must say). Each call passes bad arguments
# straight to the C++ op; the message must name the problem and, where there is one, the shape,
# dtype or device that was wrong.
CASES = [
    # Gumbel-softmax
    ("gs_int_logits", "*", lambda d: ops.gumbel_softmax(T([1, 2], device=d), _so(), 1.0, False, -1),
     r"logits must be float32, float64, bfloat16 or float16, got Long"),
    ("gs_scalar", "*", lambda d: ops.gumbel_softmax(T(1.0, device=d), _so(), 1.0, False, 0),
     r"expected a tensor with at least one dimension"),
    ("gs_dim", "*", lambda d: ops.gumbel_softmax(torch.ones(2, 3, device=d), _so(), 1.0, False, 5),
     r"dim 5 is out of range for a 2-d tensor \(expected -2 <= dim < 2\)"),
    ("gs_tau", "*", lambda d: ops.gumbel_softmax(torch.ones(2, 3, device=d), _so(), 0.0, False, -1),
     r"tau must be a finite number > 0, got 0"),
    ("gs_seed", "*", lambda d: ops.gumbel_softmax(torch.ones(2, 3, device=d), T([1.0]), 1.0, False, -1),
     r"seed_offset must be a CPU int64 tensor of two elements \(seed, offset\), got Float on cpu with 1"),
    ("gs_bwd_shape", "*", lambda d: ops.gumbel_softmax_backward(
        torch.ones(2, 3, device=d), torch.ones(2, 4, device=d), 1.0, -1),
     r"grad has shape \[2, 3\] but the saved sample has shape \[2, 4\]"),
    ("gs_bwd_device", "cuda", lambda d: ops.gumbel_softmax_backward(
        torch.ones(2, 3), torch.ones(2, 3, device=d), 1.0, -1),
     r"grad is on cpu but the saved sample is on cuda"),
    # GAN losses
    ("gl_codes", "*", lambda d: ops.gan_loss(None, torch.ones(3, device=d), 7, 0, 1),
     r"unknown kind/role codes \(7, 0\): kind is 0..4 \(bce, hinge, wasserstein, rsgan, ragan\), "
     r"role 0..1"),
    ("gl_reduction", "*", lambda d: ops.gan_loss(None, torch.ones(3, device=d), 0, 1, 9),
     r"unknown reduction code 9"),
    ("gl_int", "*", lambda d: ops.gan_loss(None, T([1, 2], device=d), 0, 1, 1),
     r"fake_logits must be float32, float64, bfloat16 or float16, got Long"),
    ("gl_device", "cuda", lambda d: ops.gan_loss(torch.ones(3), torch.ones(3, device=d), 0, 0, 1),
     r"real_logits and fake_logits must be on the same device, got cpu and cuda:0"),
    ("gl_fake_device", "cuda", lambda d: ops.gan_loss(torch.ones(3, device=d), torch.ones(3), 0, 0, 1),
     r"fake_logits is on cpu but this kernel runs on cuda"),
    ("gl_needs_real", "*", lambda d: ops.gan_loss(None, torch.ones(3, device=d), 0, 0, 1),
     r"kind 'bce' role 'discriminator' needs real_logits, got None"),
    ("gl_dtypes", "*", lambda d: ops.gan_loss(torch.ones(3, device=d, dtype=torch.float64),
                                              torch.ones(3, device=d), 0, 0, 1),
     r"real_logits and fake_logits must have the same dtype, got Double and Float"),
    ("gl_rsgan_shapes", "*", lambda d: ops.gan_loss(torch.ones(8, device=d), torch.ones(6, device=d),
                                                    3, 0, 1),
     r"kind 'rsgan' pairs real and fake logits elementwise, so their shapes must match, got \[8\] and \[6\]"),
    ("gl_none_ragan", "*", lambda d: ops.gan_loss(torch.ones(3, device=d), torch.ones(3, device=d),
                                                  4, 0, 0),
     r"reduction 'none' is not defined for kind 'ragan'"),
    ("gl_none_shapes", "*", lambda d: ops.gan_loss(torch.ones(2, 3, device=d), torch.ones(3, 2, device=d),
                                                   0, 0, 0),
     r"reduction 'none' for the discriminator loss adds the real and fake terms elementwise, so "
     r"their shapes must match, got \[2, 3\] and \[3, 2\]"),
    # Attention
    ("at_int", "*", lambda d: ops.attention(*(t.long() for t in _qkv(d)), None, False, 1.0),
     r"attention: q must be float32, float64, bfloat16 or float16, got Long"),
    ("at_dtypes", "*", lambda d: ops.attention(*_qkv(d)[:2], _qkv(d)[2].double(), None, False, 1.0),
     r"q, k and v must have the same dtype, got Float, Float, Double"),
    ("at_dims", "*", lambda d: ops.attention(torch.ones(2, 4, 8, device=d), *_qkv(d)[1:], None, False, 1.0),
     r"q, k, v must be 4-d \(batch, heads, seq, head_dim\), got 3-d, 4-d, 4-d"),
    ("at_batch", "*", lambda d: ops.attention(_qkv(d, B=2)[0], *_qkv(d)[1:], None, False, 1.0),
     r"batch sizes differ: q 2, k 1, v 1"),
    ("at_head_dim", "*", lambda d: ops.attention(*_qkv(d, Dk=16), None, False, 1.0),
     r"head dims differ: q 8, k 16, v 16"),
    ("at_kv", "*", lambda d: ops.attention(*_qkv(d)[:2], _qkv(d, Sk=5)[2], None, False, 1.0),
     r"k and v must have the same heads and length, got k \[1, 2, 4, 8\] and v \[1, 2, 5, 8\]"),
    ("at_gqa", "*", lambda d: ops.attention(*_qkv(d, H=3, Hkv=2), None, False, 1.0),
     r"q heads \(3\) must be a multiple of k/v heads \(2\)"),
    ("at_scale", "*", lambda d: ops.attention(*_qkv(d), None, False, float("nan")),
     r"scale must be finite, got nan"),
    ("at_mask_dtype", "*", lambda d: ops.attention(*_qkv(d), _mask(d, dtype=torch.float32), False, 1.0),
     r"key_padding_mask must be bool, got Float"),
    ("at_mask_shape", "*", lambda d: ops.attention(*_qkv(d), _mask(d, (1, 5)), False, 1.0),
     r"key_padding_mask must have shape \(batch, S_k\) = \(1, 4\), got \[1, 5\]"),
    ("at_mask_device", "cuda", lambda d: ops.attention(*_qkv(d), _mask("cpu"), False, 1.0),
     r"key_padding_mask is on cpu but q is on cuda:0"),
    ("at_devices", "cuda", lambda d: ops.attention(_qkv(d)[0], *_qkv("cpu")[1:], None, False, 1.0),
     r"q, k, v must be on one CUDA device, got cuda:0, cpu, cpu"),
    ("at_cuda_case", "cuda", lambda d: ops.attention(*_qkv(d), None, False, 1.0),
     r"the CUDA kernel runs bfloat16 and float16 with head dim 64, 96 or 128 \(tensor cores\), got Float "
     r"with head dim 8; impl=\"auto\" or impl=\"sdpa\" runs this case on PyTorch's scaled_dot_product_attention"),
    ("at_cuda_head_dim", "cuda", lambda d: ops.attention(*_qkv(d, dtype=torch.bfloat16, D=80), None, False, 1.0),
     r"got BFloat16 with head dim 80"),
    ("at_bwd_shapes", "*", lambda d: ops.attention_backward(
        *_bwd_args(d, grad_out=torch.ones(1, 2, 3, 8, device=d))),
     r"grad_out \[1, 2, 3, 8\] and out \[1, 2, 4, 8\] must have the shape of q \[1, 2, 4, 8\]"),
    ("at_bwd_lse", "*", lambda d: ops.attention_backward(*_bwd_args(d, lse=torch.zeros(1, 2, 5, device=d))),
     r"lse must be Float of shape \(1, 2, 4\), got Float \[1, 2, 5\]"),
    # The keyword features (window, softcap, document_ids, attn_mask, dropout): checked alike on CPU and CUDA.
    ("at_window", "cpu", lambda d: ops.attention(*_qkv(d), None, False, 1.0, -2, 0),
     r"window sides must be >= 0, or -1 for unbounded, got \(-2, 0\)"),
    ("at_softcap", "cpu", lambda d: ops.attention(*_qkv(d), None, False, 1.0, softcap=-1.0),
     r"softcap must be a finite number > 0 \(0 = none\), got -1"),
    ("at_dropout_p", "cpu", lambda d: ops.attention(*_qkv(d), None, False, 1.0, dropout_p=1.0, seed_offset=_so()),
     r"dropout_p must be in \[0, 1\), got 1"),
    ("at_dropout_seed", "cpu", lambda d: ops.attention(*_qkv(d), None, False, 1.0, dropout_p=0.5),
     r"dropout_p > 0 needs seed_offset"),
    ("at_docs_dtype", "cpu", lambda d: ops.attention(*_qkv(d), None, False, 1.0, document_ids=torch.zeros(1, 4, device=d)),
     r"document_ids must be an integer tensor, got Float"),
    ("at_docs_square", "cpu", lambda d: ops.attention(*_qkv(d, Sk=5), None, False, 1.0,
                                                      document_ids=torch.zeros(1, 5, dtype=torch.long, device=d)),
     r"document_ids needs S_q == S_k, got 4 and 5"),
    ("at_docs_shape", "cpu", lambda d: ops.attention(*_qkv(d), None, False, 1.0,
                                                     document_ids=torch.zeros(1, 3, dtype=torch.long, device=d)),
     r"document_ids must have shape \(batch, S\) = \(1, 4\), got \[1, 3\]"),
    ("at_docs_device", "cuda", lambda d: ops.attention(*_qkv(d), None, False, 1.0,
                                                       document_ids=torch.zeros(1, 4, dtype=torch.long)),
     r"document_ids is on cpu but q is on cuda:0"),
    ("at_amask_dtype", "cpu", lambda d: ops.attention(*_qkv(d), None, False, 1.0, attn_mask=torch.ones(1, 1, 4, 4, device=d)),
     r"attn_mask must be bool, got Float"),
    ("at_amask_shape", "cpu", lambda d: ops.attention(*_qkv(d), None, False, 1.0,
                                                      attn_mask=torch.ones(1, 3, 4, 4, dtype=torch.bool, device=d)),
     r"attn_mask must have shape \(batch or 1, heads or 1, S_q, S_k\) = \(1 or 1, 2 or 1, 4, 4\), got \[1, 3, 4, 4\]"),
    ("at_amask_device", "cuda", lambda d: ops.attention(*_qkv(d), None, False, 1.0,
                                                        attn_mask=torch.ones(1, 1, 4, 4, dtype=torch.bool)),
     r"attn_mask is on cpu but q is on cuda:0"),
    # sinks, grad_lse, and a [seed, offset] drawn on the device (under CUDA-graph capture)
    ("at_sinks_dtype", "*", lambda d: ops.attention(*_qkv(d), None, False, 1.0, sinks=T([1, 2], device=d)),
     r"sinks must be floating \(float32\), got Long"),
    ("at_sinks_shape", "*", lambda d: ops.attention(*_qkv(d), None, False, 1.0, sinks=torch.zeros(3, device=d)),
     r"sinks must have shape \(heads,\) = \(2,\), got \[3\]"),
    ("at_sinks_device", "cuda", lambda d: ops.attention(*_qkv(d), None, False, 1.0, sinks=torch.zeros(2)),
     r"sinks is on cpu, q on cuda"),
    ("at_grad_lse", "*", lambda d: ops.attention_backward(*_bwd_args(d), grad_lse=torch.zeros(1, 2, 5, device=d)),
     r"grad_lse must have lse's shape \[1, 2, 4\] on .*, got \[1, 2, 5\]"),
    ("at_device_seed", "cuda", lambda d: ops.attention(*_qkv(d), None, False, 1.0, dropout_p=0.1,
                                                       seed_offset=T([1.0, 2.0], device=d)),
     r"a device seed_offset must be a contiguous int64 tensor of two elements on q's device"),
    ("gs_device_seed", "cuda", lambda d: ops.gumbel_softmax(torch.ones(2, 3, device=d), T([1.0, 2.0], device=d),
                                                            1.0, False, -1),
     r"a device seed_offset must be a contiguous int64 tensor of two"),
    ("fast_path_verdict", "*", lambda d: __import__("gencore._C").\
        _C.attention_fast_path_remember(*_qkv(d), True, 3),
     r"attention fast path: verdict must be 0 \(checked path\), 1 \(SDPA\) or 2 \(SDPA, causal\), got 3"),
]

# Checks no argument can reach: internal invariants, CUDA launch failures, int32 overflow guards.
# (compute capability: every GPU the tests run on is sm_80+.)
UNREACHABLE = ("internal error", "CUDA launch failed", "sequence too long",
               "expected float32, float64, bfloat16 or float16",
               "compute capability 8.0", "CUDA device index")


def run_cases(device: str) -> None:
    """Child process: runs each case, prints one line per case (flushed, so a crash names it)."""
    import gencore  # noqa: F401  (registers torch.ops.gencore)
    from gencore import _backend
    assert _backend.load() is not None, _backend.reason()
    for name, where, call, pattern in CASES:
        if where != "*" and where != device:
            continue
        print(f"start {name}", flush=True)
        try:
            call(device)
        except RuntimeError as exc:
            ok = re.search(pattern, str(exc)) is not None
            print(f"{'ok' if ok else 'bad'} {name}: {str(exc).splitlines()[0][:300]}", flush=True)
        else:
            print(f"bad {name}: no error raised", flush=True)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_every_error_is_raised_with_its_message(device):
    from _helpers import need_fused
    for op in ("gumbel_softmax", "gan_loss", "attention"):
        need_fused(op, device)
    res = subprocess.run([sys.executable, __file__, device], capture_output=True, text=True,
                         timeout=600, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    lines = res.stdout.splitlines()
    started = [l.split()[1] for l in lines if l.startswith("start ")]
    assert res.returncode == 0, (f"the child process died (exit {res.returncode}) during case "
                                 f"{started[-1] if started else '?'}:\n{res.stderr[-3000:]}")
    bad = [l for l in lines if l.startswith("bad ")]
    assert not bad, "\n".join(bad)
    want = [name for name, where, _, _ in CASES if where in ("*", device)]
    assert [l.split()[1].rstrip(":") for l in lines if l.startswith("ok ")] == want


def _checks_in_csrc():
    """The longest message fragment of every TORCH_CHECK under csrc/ (kernels excluded)."""
    files = glob.glob(str(ROOT / "csrc" / "*.h")) + glob.glob(str(ROOT / "csrc" / "*.cpp"))
    files += glob.glob(str(ROOT / "csrc" / "cpu" / "*.cpp")) + glob.glob(str(ROOT / "csrc" / "cuda" / "*.cpp"))
    for path in sorted(files):
        for m in re.finditer(r"TORCH_CHECK\((.*?)\);", Path(path).read_text(), re.S):
            words = re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(1))
            words = [re.sub(r"^\w+: ", "", w).strip(" :,()'") for w in words]
            if any(words):
                yield Path(path).name, max(words, key=len)  # the most telling fragment


def test_every_check_has_a_case():
    patterns = [pattern for *_, pattern in CASES]
    missing = []
    for where, fragment in _checks_in_csrc():
        if any(u in fragment for u in UNREACHABLE):
            continue
        if not any(fragment in re.sub(r"\\(.)", r"\1", p) for p in patterns):
            missing.append(f"{where}: {fragment!r}")
    assert not missing, "TORCH_CHECKs with no case in CASES:\n" + "\n".join(missing)


if __name__ == "__main__":
    run_cases(sys.argv[1])
