"""torch.distributed plumbing: the same script runs alone or under `torchrun`.

Under `torchrun` (WORLD_SIZE > 1 in the environment) `init()` joins the process group: gloo on
CPU, nccl on CUDA (each process on its LOCAL_RANK device). Gradients are synchronised by torch's
own engines, chosen by `TrainerConfig.parallel`:

- `ddp`: `torch.nn.parallel.DistributedDataParallel`, one per module that an optimizer steps
  (`DDPSync`): bucketed all-reduces that start while the backward is still running.
- `fsdp`: FSDP2 (`torch.distributed.fsdp.fully_shard`) per transformer block and on each module
  (`shard`): parameters, gradients and optimizer state are sharded across the processes.

`StopFlag` lets every process agree, without a host-device sync, on the step after which a
SIGTERM/SIGUSR1 that reached any of them stops training.
"""
from __future__ import annotations

import atexit
import contextlib
import importlib
import inspect
import os
import weakref
from typing import Dict, Iterable, List, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from .._device import resolve_device

__all__ = ["init", "is_distributed", "rank", "world_size", "is_main", "broadcast_module",
           "all_reduce_sum", "barrier", "shutdown", "DDPSync", "shard", "shard_units", "StopFlag",
           "PARALLEL"]

PARALLEL = ("ddp", "fsdp")


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
        # Keys of this attempt only: after a torchrun restart (--max-restarts) the store may still
        # hold the previous attempt's addresses, and a restarted worker connecting to a dead
        # peer's port fails ("Gloo connectFullMesh failed ... Connection refused").
        store, r, n = next(dist.rendezvous("env://"))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(backend=backend, store=dist.PrefixStore(f"gencore/{attempt}/", store),
                                rank=r, world_size=n)
        atexit.register(shutdown)
    return dev


def shutdown() -> None:
    """Leaves the process group (all processes together). Runs at exit; safe to call earlier."""
    global _CONTROL
    if is_distributed():
        # Leave together: no process closes its connections while a peer is still in its last
        # collective.
        try:
            dist.barrier()
        finally:
            # Drop what holds the groups (DDP reducers, the control group) so that gloo's
            # worker threads end with them.
            for sync in list(_SYNCS):
                sync.ddp.clear()
            _CONTROL = None
            dist.destroy_process_group()


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
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


# ----------------------------------------------------------------------------- DDP

_SYNCS: "weakref.WeakSet[DDPSync]" = weakref.WeakSet()

class _Armed(nn.Module):
    """What DDP wraps: the module itself, with a forward that computes nothing. Calling the DDP
    wrapper arms its reducer for the next backward (see DDPSync)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self):
        return None


class DDPSync:
    """One `DistributedDataParallel` per module that an optimizer steps.

    DDP with `find_unused_parameters=False` needs nothing from the forward pass: its forward only
    arms the reducer so that the next backward all-reduces every gradient in buckets as they
    become ready (overlapped with the rest of the backward, averaged over the processes). So the
    Trainer arms the modules an optimizer steps right before that optimizer's backward (`arm`),
    and tasks call their modules however they like: plain calls, methods other than forward
    (a generator's `gumbel_sample`), a discriminator inside the generator's step (frozen with
    `requires_grad_(False)`, it takes no part in that backward). A backward that is not armed
    accumulates gradients locally, which is exactly `DDP.no_sync()`: gradient accumulation arms
    only the last micro-batch. Every trainable parameter of an armed module must receive a
    gradient in that backward (`check` says which did not).

    Buffers are broadcast from rank 0 once at construction (as DDP does), not at every step
    (`forward_sync_buffers=False`, formerly `broadcast_buffers=False`): running statistics stay
    per process.
    """

    def __init__(self, modules: Dict[str, nn.Module], device: torch.device,
                 bucket_cap_mb: Optional[float] = None):
        from torch.nn.parallel import DistributedDataParallel as DDP
        kw = {} if bucket_cap_mb is None else {"bucket_cap_mb": bucket_cap_mb}
        # Buffers synced at construction only (torch 2.13 renamed broadcast_buffers).
        kw["forward_sync_buffers" if "forward_sync_buffers" in
           inspect.signature(DDP.__init__).parameters else "broadcast_buffers"] = False
        self.ddp: Dict[str, nn.Module] = {}
        _SYNCS.add(self)
        for name, m in modules.items():
            if not any(p.requires_grad for p in m.parameters()):
                broadcast_module(m)
                continue
            self.ddp[name] = DDP(_Armed(m), device_ids=[device.index] if device.type == "cuda"
                                 else None, gradient_as_bucket_view=True, **kw)

    def arm(self, names: Iterable[str]) -> None:
        for n in names:
            if n in self.ddp:
                self.ddp[n]()

    def check(self, names: Iterable[str]) -> None:
        """After an armed backward: every trainable parameter of those modules has a gradient
        (else DDP waits for it forever and the gradients are not averaged)."""
        for n in names:
            if n not in self.ddp:
                continue
            missing = [pn for pn, p in self.ddp[n].module.module.named_parameters()
                       if p.requires_grad and p.grad is None]
            if missing:
                raise RuntimeError(
                    f"module '{n}': parameters {missing[:5]} got no gradient in a backward that "
                    "DDP synchronises; every trainable parameter of a module an optimizer steps "
                    "must take part (freeze the others with requires_grad_(False) before "
                    "training)")


# ----------------------------------------------------------------------------- FSDP2

def shard_units(module: nn.Module) -> List[nn.Module]:
    """The submodules FSDP2 shards one by one: the transformer blocks (every module of an
    `nn.ModuleList` attribute named `blocks` or `layers`, as in gencore.models.GPT)."""
    for attr in ("blocks", "layers"):
        units = getattr(module, attr, None)
        if isinstance(units, nn.ModuleList):
            return list(units)
    return []


def shard(module: nn.Module, precision: str = "fp32") -> nn.Module:
    """`fully_shard` each block of `module` (see shard_units), then the module itself (the
    embeddings, final norm and head). bf16: FSDP2's MixedPrecisionPolicy (bf16 parameters for
    compute and all-gathers, fp32 gradient reduction, fp32 sharded master weights)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    kw = {}
    if precision == "bf16":
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                               reduce_dtype=torch.float32)
    for unit in shard_units(module):
        fully_shard(unit, **kw)
    fully_shard(module, **kw)
    return module


@contextlib.contextmanager
def gather_full(modules: Iterable[nn.Module]):
    """Every FSDP2 unit of `modules` all-gathered (whole weights on each process) inside the
    block, so that methods other than forward (generate) see plain tensors; resharded after.
    Every process must enter it together."""
    from torch.distributed.fsdp import FSDPModule
    units = [u for m in modules for u in m.modules() if isinstance(u, FSDPModule)]
    for u in units:
        u.set_reshard_after_forward(False, recurse=False)
        u.unshard()
    try:
        yield
    finally:
        for u in units:
            u.reshard()
            u.set_reshard_after_forward(True, recurse=False)


def local_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes this process holds for `tensors` (a DTensor's local shard only)."""
    total = 0
    for t in tensors:
        if t is None:
            continue
        t = t.to_local() if hasattr(t, "to_local") else t
        total += t.numel() * t.element_size()
    return total


# ----------------------------------------------------------------------------- stop signal

_CONTROL = None


def _control_group():
    """A gloo group for host-side flags: its collectives never wait for a device."""
    global _CONTROL
    if _CONTROL is None:
        _CONTROL = dist.new_group(backend="gloo")
    return _CONTROL


class StopFlag:
    """Has a stop been asked on any process? One step late, never a host-device sync.

    `poll(local)` after every step: it waits for the all-reduce (on a CPU gloo group) of the flags
    that every process sent at the previous poll, which has long finished, and sends this step's
    flag. Every process reads the same sum at the same step, so all stop after the same step."""

    def __init__(self):
        self._work = None
        self._flag = None
        self._group = _control_group() if is_distributed() else None

    def poll(self, local: bool) -> bool:
        if self._group is None:
            return local
        stop = False
        if self._work is not None:
            self._work.wait()
            stop = bool(self._flag.numpy()[0])  # a CPU tensor: no device involved
        self._flag = torch.tensor([1 if local else 0], dtype=torch.int32)
        self._work = dist.all_reduce(self._flag, group=self._group, async_op=True)
        return stop

    def close(self) -> None:
        if self._work is not None:
            self._work.wait()
            self._work = None
