r"""Data-parallel training with ``torchrun``: process-group setup, DDP wrapping, consistent pruning.

``bayestensor train`` detects ``torchrun``'s environment (``WORLD_SIZE > 1``) and then trains with
:class:`torch.nn.parallel.DistributedDataParallel` (gloo on CPU, NCCL on GPU). Each process reads
its shard of the data (every ``world_size``-th example or batch, from its ``rank``); gradients are
averaged over processes, so the global batch is ``world_size × train.batch_size``. Pruning changes
parameter shapes, so it must happen identically everywhere: rank 0 decides which rank indices to
keep and broadcasts the decision, every process truncates its copy (and its optimizer state),
and the model is re-wrapped in a fresh DDP. Only rank 0 writes files.

Scaling the DLRM run
--------------------
The same command scales from one CPU process to several GPUs and nodes; only the launcher changes::

    # one machine, 2 CPU processes (gloo)
    torchrun --nproc-per-node 2 -m bayestensor train criteo-dlrm --synthetic

    # one machine, 8 GPUs (NCCL): one process per GPU, each on cuda:LOCAL_RANK
    torchrun --nproc-per-node 8 -m bayestensor train criteo-dlrm --data-dir /data/criteo --device cuda

    # 4 nodes × 8 GPUs: run on every node (same rendezvous endpoint)
    torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m bayestensor train criteo-dlrm --data-dir /data/criteo --device cuda --batch-size 4096

Every process holds a full replica: the tensorized tables are small (kilobytes to megabytes),
and the 21 small plain tables about 290 MB at dimension 128, so no model parallelism is needed.
``data.train_batches`` (synthetic) counts batches of all processes together, so more processes
finish an epoch sooner; scale ``train.lr`` with the global batch as usual.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    """The place of this process in a (possibly single-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        """Whether more than one process trains."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints and writes files."""
        return self.rank == 0

    def device(self, requested: str) -> torch.device:
        """``cuda:LOCAL_RANK`` for ``cuda`` under torchrun, else ``requested``."""
        dev = torch.device(requested)
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError("--device cuda was requested but torch.cuda.is_available() is False")
            if self.enabled and dev.index is None:
                dev = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(dev)
        return dev


def current() -> DistContext:
    """The context of an already initialised process group (or of a single process)."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistContext()


def init_distributed(device: str) -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment (no-op without it)."""
    if dist.is_available() and dist.is_initialized():
        return current()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    dist.init_process_group(backend)
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), owns_group=True)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group if :func:`init_distributed` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, ctx: DistContext) -> nn.Module:
    """``DistributedDataParallel(model)`` when several processes train, else ``model`` itself.

    Call again after pruning: DDP keeps buckets sized for the old parameter shapes.
    """
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [model_device(model)] if model_device(model).type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every process (``obj`` itself in a single process)."""
    if not ctx.enabled:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, …]`` on every process."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    """Wait for every process (no-op in a single process)."""
    if ctx.enabled:
        dist.barrier()


def process_group(ctx: DistContext) -> Any:
    """The group :func:`bayestensor.prune` keeps consistent: ``WORLD`` under DDP, else ``None``."""
    return dist.group.WORLD if ctx.enabled else None
