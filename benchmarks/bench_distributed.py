"""Several processes: gradient sync step time and per-rank memory (issue 22). A script, not a
pytest suite (every case needs its own process group):

    python benchmarks/bench_distributed.py [--procs 2] [--steps 20] [--markdown]

Each case runs on `--procs` processes (gloo on loopback, one thread each, CPU) a full training
step of a GPT: forward, cross-entropy, backward, gradient sync, clipping at 1.0, fused AdamW, with
the global batch split over the processes. Sync modes:
- "allreduce": the hand-rolled sync the Trainer used before issue 22 (`_old_all_reduce_grads`,
  copied here verbatim as the baseline): after the whole backward, `torch.cat` of every gradient,
  one all-reduce, copy back.
- "ddp": gencore.train.distributed.Parallel("ddp") (the model wrapped in DistributedDataParallel
  and called through it: 25 MB buckets all-reduced while the backward runs), as the Trainer runs it.
- "fsdp": FSDP2 `fully_shard` per block (gencore.train.distributed.shard), as the Trainer runs it.
Models: "gpt-text" (4 layers, 4 heads, 128 wide, context 64, batch 12, vocabulary 100: the
recipe) and "gpt-wide" (8 layers, 8 heads, 512 wide, context 64, batch 12). The step time is
rank 0's median over `--steps` steps after 3 warmup steps, timed by gencore.timing (the harness of
every comparison), each step from a barrier. Memory: bytes this process holds
for parameters + gradients + optimizer state after a step (DTensor shards counted locally).
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path
from typing import List

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gencore.models.gpt import GPT, GPTConfig  # noqa: E402
from gencore.timing import round_robin  # noqa: E402
from gencore.train import distributed as D  # noqa: E402

MODELS = {"gpt-text": dict(n_layer=4, n_head=4, n_embd=128),
          "gpt-wide": dict(n_layer=8, n_head=8, n_embd=512)}
MODES = ("allreduce", "ddp", "fsdp")
VOCAB, BLOCK, BATCH = 100, 64, 12


def _old_all_reduce_grads(params: List[torch.nn.Parameter]) -> None:
    """gencore.train.distributed.all_reduce_grads before issue 22 (the baseline)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    off = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[off:off + n].view_as(g))
        off += n


def _case(rank: int, world: int, model_name: str, mode: str, steps: int):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=BLOCK, **MODELS[model_name]))
    D.broadcast_module(model)
    parallel, forward = None, model
    if mode == "ddp":  # as the Trainer runs it: the model wrapped, called through the wrapper
        parallel = D.Parallel("ddp", "cpu")
        parallel.wrap({"model": model}, ["model"], automatic=True)
        forward = parallel.wrapped["model"]
    elif mode == "fsdp":
        D.shard(model)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, fused=True)
    g = torch.Generator().manual_seed(rank)
    local = BATCH // world

    def step():
        x = torch.randint(0, VOCAB, (local, BLOCK), generator=g)
        y = torch.randint(0, VOCAB, (local, BLOCK), generator=g)
        dist.barrier()  # every rank starts the step together: the time is the slowest rank's
        opt.zero_grad(set_to_none=True)
        _, loss = forward(x, y)
        loss.backward()
        if mode == "allreduce":
            _old_all_reduce_grads(params)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    # Every rank must run the same number of steps (collectives): fixed repetitions, one call each.
    median = round_robin({"step": step}, min_reps=steps, max_reps=steps, warmup=3,
                         sample_time=0.0)["step"]["median"]
    state = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    mem = (D.local_bytes(params), D.local_bytes(p.grad for p in params), D.local_bytes(state))
    if parallel is not None:
        parallel.close()
    return median, mem


def _worker(rank: int, world: int, port: int, cases, steps: int, out):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    rows = []
    for model_name, mode in cases:
        t, mem = _case(rank, world, model_name, mode, steps)
        rows.append((model_name, mode, t, mem))
    if rank == 0:
        out.put(rows)
    dist.barrier()
    dist.destroy_process_group()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    cases = [(m, mode) for m in args.models for mode in MODES]
    procs = [ctx.Process(target=_worker, args=(r, args.procs, port, cases, args.steps, q))
             for r in range(args.procs)]
    for p in procs:
        p.start()
    rows = q.get()
    for p in procs:
        p.join()
    print(f"{args.procs} processes (gloo, 1 thread each), torch {torch.__version__}, "
          f"{args.steps} timed steps")
    sep = " | " if args.markdown else "  "
    head = ["model", "sync", "step ms", "vs allreduce", "params MB", "grads MB", "optim MB",
            "total MB", "vs ddp"]
    print(("| " if args.markdown else "") + sep.join(head) + (" |" if args.markdown else ""))
    if args.markdown:
        print("|" + "---|" * len(head))
    base = {(m, mode): (t, sum(mem)) for m, mode, t, mem in rows}
    for m, mode, t, mem in rows:
        cells = [m, mode, f"{t * 1e3:.1f}", f"{t / base[(m, 'allreduce')][0]:.2f}x",
                 *(f"{b / 2**20:.2f}" for b in mem), f"{sum(mem) / 2**20:.2f}",
                 f"{sum(mem) / base[(m, 'ddp')][1]:.2f}x"]
        print(("| " if args.markdown else "") + sep.join(cells) + (" |" if args.markdown else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
