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
import socket
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as torch_dist

from pipeline.errors import UserError

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


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (CUDA); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


@dataclasses.dataclass(frozen=True)
class CudaProbe:
    """What this process can see of CUDA, read once before any device is chosen."""

    available: bool  # torch.cuda.is_available()
    device_count: int  # GPUs this process may use (0 when CUDA cannot start)
    gpus_present: str  # why the node looks like it has GPUs ("/dev/nvidia0", ...); "" if none
    torch_warning: str  # torch's own message when it could not start CUDA; "" if none

    @classmethod
    def read(cls, env: Mapping[str, str] | None = None, dev: Path = Path("/dev")) -> CudaProbe:
        env = os.environ if env is None else env
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            available = torch.cuda.is_available()
        count = torch.cuda.device_count() if available else 0
        messages = [str(w.message).strip() for w in caught if "CUDA" in str(w.message)]
        visible = env.get("CUDA_VISIBLE_DEVICES")
        signs = sorted(path.name for path in dev.glob("nvidia[0-9]*")) if dev.is_dir() else []
        if signs:
            present = f"{dev / signs[0]}" + (f" and {len(signs) - 1} more" if signs[1:] else "")
        elif visible not in (None, "", "-1", "none", "NoDevFiles"):
            present = f"CUDA_VISIBLE_DEVICES={visible}"
        else:
            present = ""
        return cls(
            available, count, present, " ".join(messages).splitlines()[0] if messages else ""
        )


def select_device(
    requested: Literal["auto", "cuda", "cpu"],
    local_rank: int,
    local_world_size: int,
    probe: CudaProbe,
) -> str:
    """ "cuda:N" or "cpu" for this process, or a UserError line; never a silent CPU fallback
    on a node that has GPUs.

    Local rank r takes GPU r. A process that sees exactly one GPU while its node runs several
    (srun --gpus-per-task=1 binds one GPU to each task) takes that one; `check_distinct_gpus`
    then proves no two ranks share it."""
    if requested == "cpu":
        return "cpu"
    if not probe.available:
        reason = probe.torch_warning or "torch.cuda.is_available() is False"
        if requested == "cuda":
            raise UserError(
                f"train.device=cuda but CUDA cannot start here ({reason}): fix the driver or the "
                "torch build, or set train.device=cpu"
            )
        if probe.gpus_present:
            raise UserError(
                f"this node shows GPUs ({probe.gpus_present}) but CUDA cannot start: {reason}; "
                "update the NVIDIA driver (the cu130 torch wheels need 580 or newer) or install "
                "a torch built for it, or set train.device=cpu to train on the CPU on purpose"
            )
        return "cpu"
    if probe.device_count == 1 and local_world_size > 1:
        return "cuda:0"
    if local_rank >= probe.device_count:
        raise UserError(
            f"local rank {local_rank} needs GPU {local_rank} but this process sees "
            f"{probe.device_count} GPU(s): start at most {probe.device_count} processes per node "
            f"(--nproc-per-node={probe.device_count}) or make more GPUs visible "
            "(CUDA_VISIBLE_DEVICES)"
        )
    return f"cuda:{local_rank}"


def init_distributed(
    device: Literal["auto", "cuda", "cpu"] = "auto",
    timeout_s: float = 1800.0,
    probe: CudaProbe | None = None,
) -> DistInfo:
    """Start the process group when launched by torchrun/srun; pick the device by local rank.

    nccl on GPU, gloo on CPU. A world of one starts no process group. Raises UserError (one
    line) for a device this node cannot give (see `select_device`) and for two ranks on one GPU.
    """
    rank, local_rank, world_size, local_world_size = read_env()
    probe = probe if probe is not None else CudaProbe.read()
    device_name = select_device(device, local_rank, local_world_size, probe)
    use_cuda = device_name.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(torch.device(device_name))
    backend = None
    if world_size > 1:
        backend = "nccl" if use_cuda else "gloo"
        if not torch_dist.is_initialized():
            if "MASTER_ADDR" not in os.environ and "RANK" not in os.environ:
                raise UserError(
                    "launched under Slurm without torchrun but MASTER_ADDR is not set: "
                    "use slurm/train.sbatch or export MASTER_ADDR/MASTER_PORT"
                )
            os.environ.setdefault("RANK", str(rank))
            os.environ.setdefault("WORLD_SIZE", str(world_size))
            torch_dist.init_process_group(
                backend=backend,
                rank=rank,
                world_size=world_size,
                timeout=datetime.timedelta(seconds=timeout_s),
                device_id=torch.device(device_name) if use_cuda else None,
                **group_store(world_size, timeout_s),
            )
    dist = DistInfo(rank, local_rank, world_size, local_world_size, backend, device_name)
    if use_cuda:
        check_distinct_gpus(dist)
    return dist


def group_store(world_size: int, timeout_s: float) -> dict:
    """init_process_group's rendezvous: env:// as torchrun sets it up, except after an elastic
    restart. There torchrun's workers reuse the agent's store and the keys of the group that
    failed are still in it (torch says "a new TCPStore for every retry", but a restart on the
    same agent keeps the store: pytorch#167288), so a restarted rank would connect to a dead
    peer's gloo address. Each restart then gets its own key prefix."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or restart == "0":
        return {"init_method": "env://"}
    client = torch_dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size,
        is_master=False,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return {"store": torch_dist.PrefixStore(f"/pipeline/restart_{restart}", client)}


def check_distinct_gpus(dist: DistInfo) -> None:
    """Every rank on its own GPU (NCCL would fail later with "Duplicate GPU detected")."""
    if not dist.is_distributed:
        return
    uuid = str(torch.cuda.get_device_properties(dist.torch_device).uuid)
    mine = (socket.gethostname(), uuid, dist.rank)
    everyone: list = [None] * dist.world_size
    torch_dist.all_gather_object(everyone, mine)
    seen: dict[tuple[str, str], int] = {}
    for host, gpu, rank in everyone:
        if (host, gpu) in seen:
            raise UserError(
                f"ranks {seen[host, gpu]} and {rank} on {host} share GPU {gpu}: give every rank "
                "its own GPU (one process per GPU, or srun --gpus-per-task=1)"
            )
        seen[host, gpu] = rank


def side_group(dist: DistInfo):
    """A gloo group over every rank for small CPU collectives beside nccl (the per-step stop
    flag): they never wait for the GPU. None without a process group or when the default group
    is gloo already. A collective call: every rank must make it, in the same order."""
    if not dist.is_distributed or dist.backend != "nccl":
        return None
    return torch_dist.new_group(backend="gloo")


def coordination_store(dist: DistInfo) -> torch_dist.Store:
    """The key-value store every rank reaches: the process group's (under torchrun it lives in
    the elastic agent, so it outlives a stopped rank 0; under srun without torchrun rank 0
    hosts it); an in-process one in a world of one. The stall watchdog publishes to it."""
    if not dist.is_distributed:
        return torch_dist.HashStore()
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")  # a restarted group starts clean
    if "MASTER_ADDR" not in os.environ:  # a group started with its own store (tcp://, file://)
        store = torch_dist.distributed_c10d._get_default_store()
        return torch_dist.PrefixStore(f"watchdog/attempt_{attempt}/", store)
    # its own client connection: the process group's is locked while a collective sets up
    # connections through it, and a watchdog must not wait behind the thing it watches
    client = torch_dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=False,
        timeout=datetime.timedelta(seconds=60),
    )
    return torch_dist.PrefixStore(f"watchdog/attempt_{attempt}/", client)


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


def broadcast_buffers(model: torch.nn.Module, dist: DistInfo, src: int = 0) -> None:
    """Rank `src`'s buffers (BatchNorm running statistics) on every rank.

    DDP broadcasts buffers at the start of each training forward, but that forward then updates
    them from each rank's own batch: after the last step every rank holds slightly different
    statistics. Evaluating with those would score a different model per rank, and not the one
    rank 0 saves."""
    if not dist.is_distributed:
        return
    with torch.no_grad():
        for buffer in model.buffers():
            torch_dist.broadcast(buffer, src=src)
