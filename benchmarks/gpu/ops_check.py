"""Checks and times the fused Gumbel-softmax and GAN losses on one device; prints a table last.

    python benchmarks/gpu/ops_check.py                 # CUDA (about a minute on an H200)
    python benchmarks/gpu/ops_check.py --device cpu    # the same checks, smaller timing shapes

Needs only torch and the built extension (`python setup.py build_ext --inplace`; run from the
repository root or anywhere: the repository is put on sys.path). Checks first (any failure is
printed and makes the exit status 1): Gumbel-softmax samples on the device equal the CPU kernel's
and the reference's for the same seed (hard one-hots exactly, soft to rounding), gradients match
the reference, GAN losses and gradients match the reference and repeat bit for bit. Then timings:
CUDA events around the Python call (median of many calls), and for the GAN loss also a CUDA graph
replay of the whole step (forward + backward), which must work: no host sync, no allocation
outside the caching allocator.
"""
import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from gencore import _backend  # noqa: E402
from gencore.ops import gan_loss, gumbel_softmax  # noqa: E402
from gencore.timing import round_robin  # noqa: E402
from gencore.ops.reference import gan_loss_reference, gumbel_softmax_reference  # noqa: E402
from gencore.ops.reference.gan_loss import KINDS, REDUCTIONS, ROLES  # noqa: E402

COPY_TBS = 4.1  # measured device copy rate on the H200 (DESIGN.md), bytes read + written
FAILURES = []


def check(name, ok, detail=""):
    print(f"  {'ok  ' if ok else 'FAIL'} {name}{(': ' + detail) if detail and not ok else ''}")
    if not ok:
        FAILURES.append(name)


def gen(seed):
    return torch.Generator().manual_seed(seed)


# -- correctness ------------------------------------------------------------------------------------

def check_gumbel(dev):
    print("Gumbel-softmax: device vs CPU kernel vs reference (same seed)")
    cases = [((64, 3000), -1), ((5, 1001), -1), ((3, 40, 7), 1), ((8, 50257), -1), ((2, 70000), -1),
             ((300, 1023), -1), ((7, 5), 0)]
    for shape, dim in cases:
        for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            x = (torch.randn(shape, generator=gen(1)) * 3).to(dtype)
            xd = x.to(dev)
            tag = f"{tuple(shape)} dim={dim} {str(dtype)[6:]}"
            hard_d = gumbel_softmax(xd, 0.5, True, dim, generator=gen(2), impl="fused")
            hard_c = gumbel_softmax(x, 0.5, True, dim, generator=gen(2), impl="fused")
            so = torch.randint(0, 1 << 62, (2,), dtype=torch.int64, generator=gen(2))
            hard_r = gumbel_softmax_reference(xd, so[0], so[1], 0.5, True, dim)
            check(f"hard {tag}: device == CPU kernel == reference",
                  torch.equal(hard_d.cpu(), hard_c) and torch.equal(hard_d, hard_r))
            soft_d = gumbel_softmax(xd, 0.5, False, dim, generator=gen(3), impl="fused")
            so = torch.randint(0, 1 << 62, (2,), dtype=torch.int64, generator=gen(3))
            soft_r = gumbel_softmax_reference(xd, so[0], so[1], 0.5, False, dim)
            tol = dict(rtol=1e-5, atol=1e-6) if dtype in (torch.float32, torch.float64) else dict(rtol=1e-2, atol=1e-3)
            err = (soft_d.double() - soft_r.double()).abs().max().item()
            check(f"soft {tag}: device vs reference (max err {err:.1e})",
                  torch.allclose(soft_d.double(), soft_r.double(), **tol), f"max err {err}")
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(6, 4000, generator=gen(4)).to(dev, dtype)
        w = torch.randn(6, 4000, generator=gen(5)).to(dev, dtype)
        grads = []
        for impl in ("fused", "reference"):
            xi = x.clone().requires_grad_()
            (gumbel_softmax(xi, 0.7, True, generator=gen(6), impl=impl).float() * w.float()).sum().backward()
            grads.append(xi.grad.double())
        scale = grads[1].abs().max().item()
        err = (grads[0] - grads[1]).abs().max().item()
        check(f"hard gradient {str(dtype)[6:]}: fused vs reference (rel err {err / scale:.1e})",
              err <= (1e-5 if dtype == torch.float32 else 2e-2) * scale)
    if dev != "cpu":  # the full RNG stream at scale: the CUDA and CPU kernels draw the same samples
        x = torch.randn(1024, 32000, generator=gen(7))
        a = gumbel_softmax(x.to(dev), 0.5, True, generator=gen(8), impl="fused").cpu()
        b = gumbel_softmax(x, 0.5, True, generator=gen(8), impl="fused")
        check("hard (1024, 32000) float32: CUDA == CPU kernel (32.8M samples)", torch.equal(a, b))


def check_gan(dev):
    print("GAN losses: device vs reference, and run-to-run bit equality")
    ok_ref, ok_det = True, True
    for kind in KINDS:
        for role in ROLES:
            for red in REDUCTIONS:
                if kind == "ragan" and red == "none":
                    continue
                shape_r, shape_f = ((4, 1, 5, 7),) * 2 if kind == "rsgan" or red == "none" else ((67,), (4, 1, 3, 5))
                r = (torch.randn(shape_r, generator=gen(1)) * 3).to(dev).requires_grad_()
                f = (torch.randn(shape_f, generator=gen(2)) * 3).to(dev).requires_grad_()
                outs = []
                for fn in (lambda a, b: gan_loss(a, b, kind, role, red, impl="fused"),
                           lambda a, b: gan_loss_reference(a, b, kind, role, red),
                           lambda a, b: gan_loss(a, b, kind, role, red, impl="fused")):
                    r.grad = f.grad = None
                    loss = fn(r, f)
                    loss.backward(torch.ones_like(loss))
                    outs.append([loss.detach(), None if r.grad is None else r.grad.clone(), f.grad.clone()])
                for a, b in zip(outs[0], outs[1]):
                    if a is None or b is None:
                        continue
                    if not torch.allclose(a, b, rtol=2e-5, atol=1e-6):
                        ok_ref = False
                        print(f"    mismatch {kind} {role} {red}: {(a - b).abs().max().item()}")
                for a, b in zip(outs[0], outs[2]):
                    if a is not None and not torch.equal(a, b):
                        ok_det = False
    check("every kind x role x reduction matches the reference", ok_ref)
    check("results repeat bit for bit", ok_det)
    n = 1 << 20
    r = torch.randn(n, generator=gen(3)).to(dev)
    f = torch.randn(n, generator=gen(4)).to(dev)
    a = gan_loss(r, f, "ragan", "discriminator", impl="fused")
    b = gan_loss(r, f, "ragan", "discriminator", impl="fused")
    c = gan_loss_reference(r, f, "ragan", "discriminator")
    check("ragan at 2^20: deterministic and matches the reference",
          torch.equal(a, b) and torch.allclose(a, c, rtol=1e-5))


# -- timing -----------------------------------------------------------------------------------------

def compare(dev, fns, reps, warmup=3):
    """Median milliseconds per call of each fn: gencore.timing's round-robin (CUDA events on a
    GPU)."""
    stats = round_robin(fns, torch.device(dev).type, min_reps=reps, max_reps=reps, warmup=warmup)
    return {name: st["median"] * 1e3 for name, st in stats.items()}


def time_gumbel(dev, rows, cpu_rows):
    shapes = [(8192, 32000), (1280, 5000)] if dev != "cpu" else [(cpu_rows, 5000)]
    reps = 20 if dev != "cpu" else 15
    for shape in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(shape, device=dev, dtype=dtype)
            xg = x.clone().requires_grad_()
            g = torch.randn(shape, device=dev, dtype=dtype)
            numel, size = x.numel(), x.element_size()

            def no_grad(fn):
                def call():
                    with torch.no_grad():
                        fn(x)
                return call

            def fwd_bwd(fn):
                def step():
                    xg.grad = None
                    fn(xg).backward(g)
                return step
            for hard in (False, True):
                t = compare(dev, {
                    "fused": no_grad(lambda t: gumbel_softmax(t, 0.5, hard, impl="fused")),
                    "torch": no_grad(lambda t: F.gumbel_softmax(t, 0.5, hard)),
                    "softmax": no_grad(lambda t: torch.softmax(t, -1)),
                    "fused_fb": fwd_bwd(lambda t: gumbel_softmax(t, 0.5, hard, impl="fused")),
                    "torch_fb": fwd_bwd(lambda t: F.gumbel_softmax(t, 0.5, hard)),
                }, reps)
                tbs = numel * size * (3 if hard else 2) / (t["fused"] * 1e-3) / 1e12
                name = f"gumbel {shape[0]}x{shape[1]} {str(dtype)[6:]} {'hard' if hard else 'soft'}"
                rows.append((name + " fwd", t["fused"], t["torch"], t["softmax"],
                             f"{t['torch'] / t['fused']:.2f}x F; {t['fused'] / t['softmax']:.2f}x softmax; "
                             f"{tbs:.2f} TB/s" + (f" ({tbs / COPY_TBS:.0%} of copy)" if dev != "cpu" else "")))
                rows.append((name + " fwd+bwd", t["fused_fb"], t["torch_fb"], None,
                             f"{t['torch_fb'] / t['fused_fb']:.2f}x F"))


def time_gan(dev, rows):
    bce = F.binary_cross_entropy_with_logits
    sizes = [64, 4096, 1 << 20, 1 << 24] if dev != "cpu" else [64, 4096, 1 << 20]
    for n in sizes:
        r = torch.randn(n, device=dev).requires_grad_()
        f = torch.randn(n, device=dev).requires_grad_()
        ones, zeros = torch.ones(n, device=dev), torch.zeros(n, device=dev)
        reps = 300 if n <= 4096 else 30

        def step(fused):
            def go():
                r.grad = f.grad = None
                loss = gan_loss(r, f, "bce", "discriminator") if fused else bce(r, ones) + bce(f, zeros)
                loss.backward()
            return go
        t = compare(dev, {"fused": step(True), "torch": step(False)}, reps)
        rows.append((f"gan bce disc n={n} fwd+bwd", t["fused"], t["torch"], None,
                     f"{t['torch'] / t['fused']:.2f}x builtins"))
        if dev != "cpu":
            t_gf, t_gt = graph_time(step(True), r, f, reps), graph_time(step(False), r, f, reps)
            rows.append((f"gan bce disc n={n} graph replay", t_gf, t_gt, None, f"{t_gt / t_gf:.2f}x builtins"))
    # Where the eager time goes at n = 64: forward without and with autograd, backward alone, and
    # the engine's fixed cost (the backward of the smallest graph).
    n = 64
    r = torch.randn(n, device=dev).requires_grad_()
    f = torch.randn(n, device=dev).requires_grad_()
    r0, f0 = r.detach(), f.detach()
    loss = gan_loss(r, f, "bce", "discriminator")

    def backward_only():
        r.grad = f.grad = None
        loss.backward(retain_graph=True)

    def sum_backward():
        r.grad = None
        r.sum().backward()
    t = compare(dev, {"fwd": lambda: gan_loss(r0, f0, "bce", "discriminator"),
                      "fwd_grad": lambda: gan_loss(r, f, "bce", "discriminator"),
                      "bwd": backward_only, "sum_bwd": sum_backward}, 300)
    rows.append(("gan bce disc n=64 stages (us)", None, None, None,
                 f"fwd no-grad {t['fwd'] * 1e3:.1f}, fwd with grad {t['fwd_grad'] * 1e3:.1f}, "
                 f"bwd {t['bwd'] * 1e3:.1f}; x.sum().backward() {t['sum_bwd'] * 1e3:.1f}"))


def graph_time(step, r, f, reps):
    """Milliseconds per replay of a CUDA graph holding the whole step; None if capture fails."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    try:
        with torch.cuda.stream(s):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        r.grad = f.grad = None
        with torch.cuda.graph(graph):
            step()
    except Exception as exc:  # noqa: BLE001 (reported, and a failure of the check)
        check(f"CUDA graph capture of the GAN step ({exc.__class__.__name__})", False, str(exc)[:200])
        return math.nan
    return compare("cuda", {"replay": graph.replay}, reps)["replay"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--rows", type=int, default=1280, help="rows of the CPU Gumbel timing shape (x 5000)")
    args = ap.parse_args()
    dev = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    for op in ("gumbel_softmax", "gan_loss"):
        if not _backend.has_kernel(op, torch.device(dev).type):
            sys.exit(f"no fused {op} kernel for {dev}: {_backend.reason()}")
    t0 = time.time()
    name = torch.cuda.get_device_name() if dev != "cpu" else f"CPU, {torch.get_num_threads()} threads"
    print(f"gencore ops check on {name}, torch {torch.__version__}")
    check_gumbel(dev)
    check_gan(dev)
    rows = []
    time_gumbel(dev, rows, args.rows)
    time_gan(dev, rows)

    def ms(v):
        return "-" if v is None or v != v else f"{v:.4f}"
    print(f"\n{'case':<58} {'fused ms':>9} {'builtin ms':>10} {'softmax ms':>10}  ratio")
    for case, a, b, c, note in rows:
        print(f"{case:<58} {ms(a):>9} {ms(b):>10} {ms(c):>10}  {note}")
    print(f"\n{len(FAILURES)} check(s) failed; {time.time() - t0:.0f} s")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
