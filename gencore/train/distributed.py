"""torch.distributed plumbing: the same script runs alone or under `torchrun`.

Under `torchrun` (WORLD_SIZE > 1 in the environment) `init()` joins the process group: gloo on
CPU, nccl on CUDA (each process on its LOCAL_RANK device). `Parallel` (chosen by
`TrainerConfig.parallel`) owns the rest: replicated (`ddp`: DistributedDataParallel) or sharded
(`fsdp`: FSDP2 `fully_shard` per block), gradient sync under accumulation, checkpoint format.

`StopFlag` lets every process agree, without a host-device sync, on the step after which a
SIGTERM/SIGUSR1 that reached any of them stops training.
"""
from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import weakref
from typing import Dict, Iterable, List

import torch
import torch.distributed as dist
import torch.nn as nn

from .._device import resolve_device

__all__ = ["init", "is_distributed", "rank", "world_size", "is_main", "broadcast_module",
           "all_reduce_sum", "barrier", "shutdown", "Parallel", "average_gradients", "shard", "shard_units", "StopFlag",
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
            for p in list(_PARALLELS):
                p.close()
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


# ----------------------------------------------------------------------------- Parallel

_PARALLELS: "weakref.WeakSet[Parallel]" = weakref.WeakSet()


class Parallel:
    """How the processes of a run share the work: the one object that owns the process group,
    the wrapping of the modules, how gradients are synchronised (also under accumulation) and
    which checkpoint format the run writes. The Trainer asks it; one process is the case
    world_size == 1 of the same code.

    - replicated (`mode="ddp"`): every process holds the whole model. A module stepped after
      the task's one backward per step (automatic optimization) is wrapped in
      `DistributedDataParallel` (`wrapped[name]`, what `Task.training_module(name)` returns),
      whose forward arms the bucketed all-reduce that averages the gradients while the backward
      still runs. Under accumulation every micro-batch
      but the last sets `require_backward_grad_sync = False` before its forward, as nanoGPT's
      train.py does: those backwards accumulate locally. Checkpoints: one file, rank 0 writes it.
    - sharded (`mode="fsdp"`, several processes): FSDP2 `fully_shard` per transformer block and
      on the module (parameters, gradients, optimizer state sharded); accumulation through
      `set_requires_gradient_sync`. Checkpoints: torch.distributed.checkpoint (DCP), at any
      world size, so that a run moves between 1 and N processes.

    Tasks that step their optimizers themselves (GANs: `automatic_optimization = False`) are
    replicated without DDP, for three reasons in their steps: R1's penalty takes gradients of
    gradients (`torch.autograd.grad(create_graph=True)` inside the discriminator's step), which
    DDP's reducer does not support; the text GAN's generator is used through methods other than
    forward (`gumbel_sample`, `mle_loss`), and DDP only prepares its reducer in forward; and the
    discriminator runs, frozen, inside the generator's step, so one module takes part in
    backwards that must and must not average its gradients. So after each optimizer's backward,
    `average_gradients` all-reduces the gradients of the modules that optimizer steps (one
    collective per module): no overlap with the backward, which costs little at these models'
    size, and nothing hidden in a forward.
    """

    def __init__(self, mode: str = "ddp", device: str = "cpu"):
        if mode not in PARALLEL:
            raise ValueError(f"parallel={mode!r} is not valid; choose one of {list(PARALLEL)}")
        self.mode = mode
        self.device = init(device)
        self.rank, self.world_size = rank(), world_size()
        self.sharded = mode == "fsdp" and self.world_size > 1
        # DCP whenever the run is fsdp, also on one process: its checkpoints resume sharded.
        self.checkpoint_format = "dcp" if mode == "fsdp" else "file"
        self.wrapped: Dict[str, nn.Module] = {}     # DDP wrappers: what training_step calls
        self._averaged: Dict[str, nn.Module] = {}   # manual tasks: averaged after each backward
        self._sharded: Dict[str, nn.Module] = {}
        self._called: Dict[str, bool] = {}
        _PARALLELS.add(self)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def place(self, modules: Dict[str, nn.Module], automatic: bool, precision: str = "fp32") -> None:
        """Moves `modules` to the device with the same start on every process; sharded: shards
        them (before the optimizers are built on their parameters)."""
        if self.sharded and not automatic:
            raise ValueError("parallel='fsdp' shards tasks with automatic optimization (one "
                             "backward per step, e.g. the GPT recipes); use parallel='ddp' for "
                             "this task")
        for name, m in modules.items():
            m.to(self.device)
            if self.world_size > 1:
                broadcast_module(m)
            if self.sharded:
                self._sharded[name] = shard(m, precision)

    def wrap(self, modules: Dict[str, nn.Module], stepped: Iterable[str], automatic: bool) -> None:
        """Replicated, several processes: the modules an optimizer steps (`stepped`) in DDP when
        the task takes one backward per step (`automatic`), else kept for `average_gradients`."""
        if self.world_size == 1 or self.sharded:
            return
        from torch.nn.parallel import DistributedDataParallel as DDP
        for name in stepped:
            m = modules[name]
            if not automatic:
                self._averaged[name] = m
            elif any(p.requires_grad for p in m.parameters()):
                ddp = DDP(m, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                          gradient_as_bucket_view=True)
                # Buffers are broadcast at construction, not before every forward: gencore's
                # are constants (rotary frequencies, a flow's permutations). (The attribute is
                # DDP's broadcast_buffers; torch 2.13 keeps it as a property of its new name.)
                ddp.broadcast_buffers = False
                ddp.register_forward_pre_hook(lambda mod, args, n=name: self._called.update({n: True}))
                self.wrapped[name] = ddp

    def gradient_sync(self, names: Iterable[str], sync: bool) -> None:
        """Before a micro-batch's forward: whether its backward averages the gradients of
        `names` (False: accumulate locally; the last micro-batch syncs)."""
        for n in names:
            if n in self.wrapped:
                self.wrapped[n].require_backward_grad_sync = sync
                self._called[n] = False
            elif n in self._sharded:
                self._sharded[n].set_requires_gradient_sync(sync)

    def after_backward(self, names: Iterable[str]) -> None:
        """After a backward that synchronised `names`: DDP's all-reduce has run if the task
        called the wrapper; the modules of manual tasks are averaged now."""
        for n in names:
            if n in self.wrapped and not self._called.get(n, True):
                raise RuntimeError(
                    f"training_step called module '{n}' directly, so DistributedDataParallel did "
                    f"not average its gradients: call it as self.training_module('{n}')(...)")
            if n in self._averaged:
                average_gradients(n, self._averaged[n], self.world_size)

    def close(self) -> None:
        """Drops the DDP wrappers (their reducers hold the process group)."""
        self.wrapped.clear()
        self._averaged.clear()
        self._sharded.clear()


def average_gradients(name: str, module: nn.Module, world: int) -> None:
    """All-reduces (averages) the gradients of `module` in one flat buffer. Every trainable
    parameter must have a gradient on every process (else the buffers differ in size)."""
    params = [p for p in module.parameters() if p.requires_grad]
    missing = [pn for pn, p in module.named_parameters() if p.requires_grad and p.grad is None]
    if missing:
        raise RuntimeError(
            f"module '{name}': parameters {missing[:5]} got no gradient in a backward whose "
            "gradients are averaged across processes; every trainable parameter of a module an "
            "optimizer steps must take part (freeze the others with requires_grad_(False))")
    if not params:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad.copy_(g.view_as(p.grad))


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
