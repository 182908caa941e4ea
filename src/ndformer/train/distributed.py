"""Multi-process data-parallel training: ``torchrun --nproc-per-node N -m ndformer train``
(or ``ndformer train --nproc N``, which launches the same).

Every step has one global batch (``batch_indices``, the same for any process count). Each
process builds that whole batch — the same samples and the same augmentation draws as one
process would — and trains on its contiguous share of it; ``DistributedDataParallel``
averages the gradients. Each process's loss is weighted by ``processes * its labelled
outputs / all labelled outputs``, so the averaged gradient is exactly the gradient of the
global batch's mean loss: with the same global batch, N processes train the same weights
as one, up to the order of float sums. Rank 0 alone writes (checkpoints, metrics,
``run.json``), validates and decides when to stop; the checkpoint holds the unwrapped
model and the step, so ``--resume`` works with another process count.

Grid tasks only: a point batch's scenes differ in size, so shares would not hold equal
work (refused with that reason). Stochastic depth draws its masks per process (runs with
``drop_path > 0`` train equally well but not bit-for-bit like one process).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..tasks.points import IGNORE


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (``torchrun``'s environment)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


def world() -> World:
    """The process group of ``torchrun`` (RANK, WORLD_SIZE), joined on first call (gloo on
    CPU); a single process without those variables."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return World(dist.get_rank(), dist.get_world_size())


def barrier(where: World) -> None:
    if where.parallel:
        dist.barrier()


def main_first(where: World, build):
    """``build()`` on rank 0 first, then on the others (which then find what rank 0 cached,
    e.g. a generated task, instead of writing it at the same time)."""
    if not where.main:
        barrier(where)
    result = build()
    if where.main:
        barrier(where)
    return result


def share(batch: tuple, where: World) -> tuple:
    """This process's contiguous share of a global (inputs, labels) batch."""
    if not where.parallel:
        return batch
    x, y = batch
    parts = torch.arange(len(y)).tensor_split(where.size)[where.rank]
    return x[parts], y[parts]


def loss_weight(labels: torch.Tensor, where: World) -> tuple[float, int]:
    """(the factor on this process's mean loss, the labelled outputs of the global batch):
    ``size * mine / total`` makes DDP's gradient average the global mean's gradient."""
    mine = torch.tensor([float((labels != IGNORE).sum())], dtype=torch.float64)
    if not where.parallel:
        return 1.0, int(mine.item())
    total = mine.clone()
    dist.all_reduce(total)
    return where.size * mine.item() / max(total.item(), 1.0), int(total.item())


def global_means(loss: float, metric: float, labels: torch.Tensor, where: World):
    """The global batch's mean loss and metric from every process's share (and whether
    the loss is finite everywhere: one process's NaN stops them all together)."""
    if not where.parallel:
        return loss, metric
    count = float((labels != IGNORE).sum())
    sums = torch.tensor([loss * count, metric * count, count], dtype=torch.float64)
    dist.all_reduce(sums)
    return (sums[0] / sums[2]).item(), (sums[1] / sums[2]).item()


def decide(flag: bool, where: World) -> bool:
    """Rank 0's decision (stop, ...) for every process."""
    if not where.parallel:
        return flag
    value = torch.tensor([1 if flag else 0])
    dist.broadcast(value, src=0)
    return bool(value.item())


def wrap(model: torch.nn.Module, where: World) -> torch.nn.Module:
    """``model`` inside ``DistributedDataParallel`` when there are several processes."""
    if not where.parallel:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model)


def finish(where: World) -> None:
    if where.parallel and dist.is_initialized():
        dist.destroy_process_group()
