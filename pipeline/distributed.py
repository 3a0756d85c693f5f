"""Rank, world and device: the one place that reads torchrun's and Slurm's environment.

Everything else receives a `DistInfo` and never looks at `RANK`, `WORLD_SIZE` or `SLURM_*`
again. All helpers also work with no process group (rank 0 of a world of 1), so loaders and
metrics can be tested without spawning processes.

Sources, in order:
  * torchrun: RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT (env:// init);
  * srun without torchrun: SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS (MASTER_ADDR/PORT must be
    exported by the batch script);
  * neither: a single process.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Mapping
from typing import Literal

import torch
import torch.distributed as torch_dist

Backend = Literal["nccl", "gloo"]


@dataclasses.dataclass(frozen=True)
class DistInfo:
    rank: int = 0  # global rank: shards data
    local_rank: int = 0  # rank on this node: picks the GPU
    world_size: int = 1
    local_world_size: int = 1
    backend: str | None = None  # None when no process group was started
    device: str = "cpu"  # "cuda:N" or "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1 and self.backend is not None

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)


def read_env(env: Mapping[str, str] | None = None) -> tuple[int, int, int, int]:
    """(rank, local_rank, world_size, local_world_size) from torchrun or Slurm variables."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        world_size = int(env["WORLD_SIZE"])
        local_world_size = int(env.get("LOCAL_WORLD_SIZE", world_size))
        return int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), world_size, local_world_size
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and "SLURM_STEP_ID" in env:
        world_size = int(env["SLURM_NTASKS"])
        local_world_size = int(env.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0])
        return (
            int(env["SLURM_PROCID"]),
            int(env.get("SLURM_LOCALID", 0)),
            world_size,
            local_world_size,
        )
    return 0, 0, 1, 1


def init_distributed(
    device: Literal["auto", "cuda", "cpu"] = "auto", timeout_s: float = 1800.0
) -> DistInfo:
    """Start the process group when launched by torchrun/srun; pick the device by local rank.

    nccl on GPU, gloo on CPU. A world of one starts no process group.
    """
    rank, local_rank, world_size, local_world_size = read_env()
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError(
            "device 'cuda' was asked for but CUDA is not available: use --device cpu"
        )
    if use_cuda:
        index = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        device_name = f"cuda:{index}"
    else:
        device_name = "cpu"
    backend = None
    if world_size > 1:
        backend = "nccl" if use_cuda else "gloo"
        if not torch_dist.is_initialized():
            if "MASTER_ADDR" not in os.environ and "RANK" not in os.environ:
                raise RuntimeError(
                    "launched under Slurm without torchrun but MASTER_ADDR is not set: "
                    "use slurm/train.sbatch or export MASTER_ADDR/MASTER_PORT"
                )
            os.environ.setdefault("RANK", str(rank))
            os.environ.setdefault("WORLD_SIZE", str(world_size))
            torch_dist.init_process_group(
                backend=backend,
                init_method="env://",
                rank=rank,
                world_size=world_size,
                timeout=datetime.timedelta(seconds=timeout_s),
                device_id=torch.device(device_name) if use_cuda else None,
            )
    return DistInfo(rank, local_rank, world_size, local_world_size, backend, device_name)


def shutdown(dist: DistInfo) -> None:
    """Destroy the process group if this process started one."""
    if dist.is_distributed and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def barrier(dist: DistInfo) -> None:
    if dist.is_distributed:
        torch_dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, dist: DistInfo) -> torch.Tensor:
    """Sum `tensor` across ranks in place (a no-op in a world of one); returns it."""
    if dist.is_distributed:
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor, dist: DistInfo) -> torch.Tensor:
    if dist.is_distributed:
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.MAX)
    return tensor


def all_gather_ints(value: int, dist: DistInfo) -> list[int]:
    """Every rank's `value`, in rank order (works on gloo and nccl)."""
    if not dist.is_distributed:
        return [int(value)]
    local = torch.tensor([int(value)], dtype=torch.int64, device=dist.torch_device)
    gathered = [torch.zeros_like(local) for _ in range(dist.world_size)]
    torch_dist.all_gather(gathered, local)
    return [int(t.item()) for t in gathered]


def broadcast_object(obj, dist: DistInfo, src: int = 0):
    """Rank `src`'s `obj` on every rank (pickled; small objects only)."""
    if not dist.is_distributed:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(
        box, src=src, device=dist.torch_device if dist.backend == "nccl" else None
    )
    return box[0]


def replica_fingerprints(model: torch.nn.Module, dist: DistInfo) -> list[torch.Tensor]:
    """Every rank's [sum, sum of squares] per parameter tensor (float64), in rank order: DDP
    replicas must be identical, and equal fingerprints show that they are."""
    with torch.no_grad():
        local = torch.stack(
            [torch.stack([p.double().sum(), p.double().square().sum()]) for p in model.parameters()]
        ).flatten()
    if not dist.is_distributed:
        return [local]
    gathered = [torch.zeros_like(local) for _ in range(dist.world_size)]
    torch_dist.all_gather(gathered, local)
    return gathered
