"""torch.distributed plumbing: the same script runs alone or under `torchrun`.

Under `torchrun --nproc_per_node=N` (WORLD_SIZE > 1 in the environment) `init()` joins the
process group: gloo on CPU, nccl on CUDA (each process on its LOCAL_RANK device). Gradients are
averaged across processes with one flattened all-reduce per optimizer step (`all_reduce_grads`),
which is what DistributedDataParallel computes; the Trainer does it explicitly rather than through
the DDP wrapper so tasks with several modules and optimizers (GANs: a discriminator run in the
generator's step but not stepped) need no `find_unused_parameters` or forward-count rules.
"""
from __future__ import annotations

import atexit
import importlib
import os
from typing import Iterable, List

import torch
import torch.distributed as dist

from .._device import resolve_device

__all__ = ["init", "is_distributed", "rank", "world_size", "is_main", "all_reduce_grads",
           "broadcast_module", "all_reduce_sum", "barrier", "shutdown"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init(device: str = "cpu") -> torch.device:
    """Joins the process group when launched by torchrun; returns this process's device
    (`device` as `resolve_device` reads it: "auto", "cpu", "cuda", "cuda:N")."""
    dev = resolve_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            dev = torch.device("cuda", local)
        # Import dynamo first: imported after the group exists (the first optimizer does it), it
        # keeps references to the group that outlive destroy_process_group, so gloo's worker
        # threads live on into interpreter shutdown, where one releasing a finished collective's
        # tensors needs the GIL and aborts the process ("terminate called without an active
        # exception", seen as a rank exiting with SIGABRT after training finished).
        importlib.import_module("torch._dynamo")
        dist.init_process_group(backend=backend)
        atexit.register(shutdown)
    return dev


def shutdown() -> None:
    """Leaves the process group (all processes together). Runs at exit; safe to call earlier."""
    if is_distributed():
        # Leave together: no process closes its connections while a peer is still in its last
        # collective.
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def all_reduce_grads(params: Iterable[torch.nn.Parameter]) -> None:
    """Averages the gradients of `params` over all processes (one flattened all-reduce)."""
    if not is_distributed():
        return
    grads: List[torch.Tensor] = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    off = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[off:off + n].view_as(g))
        off += n


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copies rank `src`'s parameters and buffers to every process (same start everywhere)."""
    if not is_distributed():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier() -> None:
    if is_distributed():
        dist.barrier()
