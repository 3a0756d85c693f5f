"""Gradient all-reduce under each comm hook (train.comm_hook): the bytes each rank sends per step,
the all-reduce time, the step with and without overlap, and the hook's own compute, each as a
ratio against `none` measured in the same run.

    python -m tools.bench_comm                  # CPU: gloo, 2 and 4 ranks, AlexNet and ResNet-50
    python -m tools.bench_comm --small          # CI size: a narrow AlexNet, 2 ranks, seconds
    python -m tools.bench_comm --models alexnet --ranks 2 --steps 8
    python -m tools.bench_comm --backend nccl --ranks 8       # a GPU machine, one rank per GPU

For each model and world size, every rank builds the same model (seed 0) and its own synthetic
batch, and for each hook in turn:
  * step, overlap: DDP with the hook, so each bucket is all-reduced while backward goes on,
    then an SGD step (what train.comm_hook runs);
  * step, no overlap: backward on a plain copy of the model, then the hook on the gradients in
    DDP's bucket plan (FlatBucket, below) and a wait, then the SGD step;
  * all-reduce: that separate hook call alone;
  * hook compute: the same hook on a group of this rank alone (no wire), minus none's: what the
    hook costs on the device beyond DDP's own all-reduce;
  * sent: the bytes this process's TCP sockets carried per overlap step (the kernel's
    tcpi_bytes_acked; gloo only: nccl's transports are not sockets, so there the payload times
    the ring's 2(N-1)/N is shown instead); payload: what the hook hands to all-reduce.
PowerSGD runs with its warm-up at the minimum (2 steps) so the timed steps compress. Medians over
the timed steps; ratios are against `none` in the same world, so machine load mostly cancels.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import socket
import statistics
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from pipeline.comm import HOOKS, build_hook
from pipeline.config import ModelConfig
from pipeline.distributed import synchronize
from pipeline.models import build_model
from pipeline.scaling import gradient_payload

TCP_INFO_BYTES_ACKED = 120  # offset of tcpi_bytes_acked in Linux's struct tcp_info (since 4.1)
BUCKET_CAP_MB = 25.0  # DDP's default, also train.bucket_cap_mb's
POWERSGD_WARMUP = 2  # the least torch allows: the timed steps compress


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str  # alexnet | resnet50
    width_mult: float = 1.0
    classifier_width: int = 4096
    image_size: int = 224
    batch_size: int = 8  # per rank
    min_elements: int = 1_000_000  # train.powersgd_min_elements


@dataclasses.dataclass(frozen=True)
class Result:
    hook: str
    sent_mb: float  # per rank per step, measured on the sockets (gloo) or payload x ring (nccl)
    payload_mb: float  # what the hook hands to all-reduce, per rank per step
    all_reduce_ms: float
    step_overlap_ms: float
    step_no_overlap_ms: float
    hook_compute_ms: float  # the hook on a one-rank group


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench_comm", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--models", nargs="+", default=["alexnet", "resnet50"], choices=["alexnet", "resnet50"]
    )
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4], help="world sizes")
    parser.add_argument("--hooks", nargs="+", default=list(HOOKS), choices=HOOKS)
    parser.add_argument("--backend", default="auto", choices=["auto", "gloo", "nccl"])
    parser.add_argument("--batch-size", type=int, default=0, help="per rank (0: per model)")
    parser.add_argument("--image-size", type=int, default=0, help="pixels (0: per model)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per hook and mode")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (>= 3)")
    parser.add_argument("--powersgd-rank", type=int, default=4)
    parser.add_argument(
        "--small",
        action="store_true",
        help="CI size: AlexNet at width 0.25, 64 px, batch 2, 2 ranks, 2 steps",
    )
    args = parser.parse_args(argv)
    if args.backend == "auto":
        args.backend = "nccl" if torch.cuda.is_available() else "gloo"
    if args.small:
        args.models, args.ranks, args.steps = ["alexnet"], [2], min(args.steps, 2)
    return args


def model_spec(name: str, args: argparse.Namespace) -> ModelSpec:
    on_gpu = args.backend == "nccl"
    if args.small:
        spec = ModelSpec(name, 0.25, 256, 64, 2, min_elements=60_000)
    elif name == "alexnet":  # full width: the FC gradients are what the all-reduce carries
        spec = ModelSpec(name, image_size=224 if on_gpu else 128, batch_size=256 if on_gpu else 8)
    else:
        spec = ModelSpec(name, image_size=224 if on_gpu else 128, batch_size=128 if on_gpu else 4)
    return dataclasses.replace(
        spec,
        image_size=args.image_size or spec.image_size,
        batch_size=args.batch_size or spec.batch_size,
    )


def build(spec: ModelSpec) -> nn.Module:
    torch.manual_seed(0)  # the same weights on every rank
    if spec.name == "alexnet":
        model_cfg = ModelConfig(width_mult=spec.width_mult, classifier_width=spec.classifier_width)
        return build_model(model_cfg, 1000)
    import torchvision  # only this model needs it

    return torchvision.models.resnet50()


def tcp_bytes_sent() -> int:
    """Bytes this process's TCP sockets have had acknowledged by their peers (Linux)."""
    total = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(int(fd)))
        except OSError:
            continue
        try:
            if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
                info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
                if len(info) >= TCP_INFO_BYTES_ACKED + 8:
                    total += struct.unpack_from("Q", info, TCP_INFO_BYTES_ACKED)[0]
        finally:
            sock.close()
    return total


class FlatBucket:
    """A stand-in for DDP's GradBucket over one flat buffer, so a hook can run outside DDP: a
    separate all-reduce after backward (the no-overlap step here), or in tests/train/test_comm.py.

        buckets = FlatBucket.plan(list(model.parameters()), cap_bytes=25 << 20)
        for bucket in buckets: bucket.load_gradients()   # or bind_gradients() before backward
        futures = [hook(state, bucket) for bucket in buckets]
        for bucket, future in zip(buckets, futures): future.wait(); bucket.store_gradients()
    """

    def __init__(self, index: int, params: Sequence[torch.Tensor], is_last: bool) -> None:
        self._index = index
        self._params = list(params)
        self._is_last = is_last
        numel = sum(p.numel() for p in self._params)
        self._buffer = torch.zeros(
            numel, dtype=self._params[0].dtype, device=self._params[0].device
        )
        self._views, offset = [], 0
        for p in self._params:
            self._views.append(self._buffer[offset : offset + p.numel()].view(p.shape))
            offset += p.numel()

    @classmethod
    def plan(cls, params: Sequence[torch.Tensor], cap_bytes: int) -> list[FlatBucket]:
        """DDP's plan after its first step: parameters in reverse order, a bucket closed once it
        holds cap_bytes; the last bucket is the one holding the first parameters."""
        groups: list[list[torch.Tensor]] = [[]]
        size = 0
        for p in reversed([p for p in params if p.requires_grad]):
            if size >= cap_bytes:
                groups.append([])
                size = 0
            groups[-1].append(p)
            size += p.numel() * p.element_size()
        return [cls(i, group, i == len(groups) - 1) for i, group in enumerate(groups)]

    def buffer(self) -> torch.Tensor:
        return self._buffer

    def set_buffer(self, tensor: torch.Tensor) -> None:
        self._buffer = tensor

    def index(self) -> int:
        return self._index

    def is_last(self) -> bool:
        return self._is_last

    def parameters(self) -> list[torch.Tensor]:
        return self._params

    def gradients(self) -> list[torch.Tensor]:
        return self._views

    def bind_gradients(self) -> None:
        """Make each parameter's .grad a view of the buffer (backward accumulates into it in
        place, as into DDP's bucket views), zeroed."""
        self._buffer.zero_()
        for p, view in zip(self._params, self._views):
            p.grad = view

    def load_gradients(self) -> None:
        """Copy the parameters' .grad into the buffer (zeros where a grad is None)."""
        for p, view in zip(self._params, self._views):
            view.copy_(p.grad) if p.grad is not None else view.zero_()

    def store_gradients(self) -> None:
        """Copy the all-reduced buffer back into the parameters' .grad."""
        for p, view in zip(self._params, self._views):
            p.grad = view.clone()


class Runner:
    """One rank's measurements of one model."""

    def __init__(self, spec: ModelSpec, args, rank: int, world: int, device: torch.device):
        self.spec, self.args, self.rank, self.world, self.device = spec, args, rank, world, device
        self.base = build(spec).to(device)
        generator = torch.Generator().manual_seed(1 + rank)  # each rank its own batch
        shape = (spec.batch_size, 3, spec.image_size, spec.image_size)
        self.images = torch.randn(shape, generator=generator).to(device)
        self.labels = torch.randint(0, 1000, (spec.batch_size,), generator=generator).to(device)
        self.solo = torch.distributed.new_subgroups(group_size=1)[0]  # this rank alone

    def hook(self, name: str, model: nn.Module, group=None):
        return build_hook(
            name,
            model,
            powersgd_rank=self.args.powersgd_rank,
            powersgd_warmup_steps=POWERSGD_WARMUP,
            powersgd_min_elements=self.spec.min_elements,
            process_group=group,
        )

    def sync(self) -> None:
        synchronize(self.device)
        torch.distributed.barrier()

    def loss(self, model: nn.Module) -> torch.Tensor:
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.device.type == "cuda"):
            return nn.functional.cross_entropy(model(self.images).float(), self.labels)

    def overlap(self, name: str) -> tuple[float, float]:
        """(median step s under DDP with the hook, bytes sent per step)."""
        model = copy.deepcopy(self.base)
        ddp = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            bucket_cap_mb=BUCKET_CAP_MB,
            gradient_as_bucket_view=True,
        )
        if name != "none":  # none: DDP's own all-reduce, as train.comm_hook=none
            ddp.register_comm_hook(*self.hook(name, model))
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        times = []
        for step in range(self.args.warmup + self.args.steps):
            if step == self.args.warmup:
                self.sync()
                sent = tcp_bytes_sent()
            self.sync()
            started = time.perf_counter()
            self.loss(ddp).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)
            self.sync()
            if step >= self.args.warmup:
                times.append(time.perf_counter() - started)
        per_step = (tcp_bytes_sent() - sent) / self.args.steps
        return statistics.median(times), per_step

    def no_overlap(self, name: str) -> tuple[float, float, float]:
        """(median step s, median all-reduce s, median hook-alone s) with the hook called after
        backward on DDP's bucket plan."""
        model = copy.deepcopy(self.base)
        buckets = FlatBucket.plan(list(model.parameters()), int(BUCKET_CAP_MB * 1024 * 1024))
        solo_buckets = FlatBucket.plan(list(model.parameters()), int(BUCKET_CAP_MB * 1024 * 1024))
        state, hook = self.hook(name, model)
        solo_state, solo_hook = self.hook(name, model, group=self.solo)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        steps, reduces, alone = [], [], []
        for step in range(self.args.warmup + self.args.steps):
            for bucket in buckets:
                bucket.bind_gradients()
            self.sync()
            started = time.perf_counter()
            self.loss(model).backward()
            backward_done = time.perf_counter()
            futures = [hook(state, bucket) for bucket in buckets]
            for future in futures:
                future.wait()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            reduced = time.perf_counter()
            optimizer.step()
            self.sync()
            finished = time.perf_counter()
            # the same hook on this rank alone, on a copy of this step's gradients
            for source, target in zip(buckets, solo_buckets):
                target.buffer().copy_(source.buffer())
            self.sync()
            solo_started = time.perf_counter()
            for future in [solo_hook(solo_state, bucket) for bucket in solo_buckets]:
                future.wait()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            solo_done = time.perf_counter()
            if step >= self.args.warmup:
                steps.append(finished - started)
                reduces.append(reduced - backward_done)
                alone.append(solo_done - solo_started)
        return statistics.median(steps), statistics.median(reduces), statistics.median(alone)


def _rank_main(rank: int, world: int, port: int, args, queue) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    on_gpu = args.backend == "nccl"
    if not on_gpu:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    from pipeline.distributed import init_distributed, shutdown

    dist = init_distributed("cuda" if on_gpu else "cpu")
    results = []
    for name in args.models:
        spec = model_spec(name, args)
        runner = Runner(spec, args, rank, world, dist.torch_device)
        shapes = [tuple(p.shape) for p in runner.base.parameters()]
        rows = []
        for hook in args.hooks:
            step_overlap, sent = runner.overlap(hook)
            step, reduce, alone = runner.no_overlap(hook)
            payload = gradient_payload(
                shapes,
                hook,
                powersgd_rank=args.powersgd_rank,
                powersgd_min_elements=spec.min_elements,
            )
            if on_gpu:  # no sockets to read: the ring's bytes per rank
                sent = payload * 2 * (world - 1) / world
            values = torch.tensor([sent, step_overlap, step, reduce, alone], dtype=torch.float64)
            gathered = [None] * world
            torch.distributed.all_gather_object(gathered, values)
            mean = torch.stack(gathered).mean(0).tolist()  # every rank's figures, averaged
            rows.append(
                Result(
                    hook,
                    sent_mb=mean[0] / 1e6,
                    payload_mb=payload / 1e6,
                    all_reduce_ms=1000 * mean[3],
                    step_overlap_ms=1000 * mean[1],
                    step_no_overlap_ms=1000 * mean[2],
                    hook_compute_ms=1000 * mean[4],
                )
            )
        results.append((spec, sum(p.numel() for p in runner.base.parameters()), rows))
        del runner
    if dist.is_main:
        queue.put(results)
    shutdown(dist)


def measure(world: int, args) -> list:
    """[(ModelSpec, parameters, [Result per hook])] from `world` spawned ranks."""
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.start_processes(
        _rank_main, args=(world, port, args, queue), nprocs=world, join=True, start_method="spawn"
    )
    return queue.get()


def format_table(
    spec: ModelSpec, parameters: int, world: int, backend: str, powersgd_rank: int, rows
) -> str:
    """The table for one model and world: figures and ratios against none (same run)."""
    none = next((r for r in rows if r.hook == "none"), rows[0])
    extra = none.hook_compute_ms

    def ratio(value: float, reference: float) -> str:
        return f"{value / reference:5.2f}x" if reference > 0 else "   - "

    title = (
        f"{spec.name} width {spec.width_mult:g} ({parameters / 1e6:.1f} M parameters, "
        f"{4 * parameters / 1e6:.1f} MB of fp32 gradients), {world} {backend} ranks, batch "
        f"{spec.batch_size} x {spec.image_size} px per rank; powersgd rank {powersgd_rank}, "
        f"size floor {spec.min_elements:,} elements; medians, ratios against none"
    )
    header = (
        "| hook | sent MB/step | vs none | payload MB | all-reduce ms | vs none | step ms, "
        "overlap | vs none | step ms, no overlap | vs none | hook compute ms (beyond none) |"
    )
    lines = [title, "", header, "|" + " --- |" * 11]
    for r in rows:
        lines.append(
            f"| {r.hook} | {r.sent_mb:.2f} | {ratio(r.sent_mb, none.sent_mb)} | "
            f"{r.payload_mb:.2f} | {r.all_reduce_ms:.1f} | "
            f"{ratio(r.all_reduce_ms, none.all_reduce_ms)} | {r.step_overlap_ms:.1f} | "
            f"{ratio(r.step_overlap_ms, none.step_overlap_ms)} | {r.step_no_overlap_ms:.1f} | "
            f"{ratio(r.step_no_overlap_ms, none.step_no_overlap_ms)} | "
            f"{r.hook_compute_ms:.1f} ({r.hook_compute_ms - extra:+.1f}) |"
        )
    return "\n".join(lines)


def describe_machine(backend: str) -> str:
    if backend == "nccl":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"CPU ({os.cpu_count()} cores), torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.warmup < 3 or args.steps < 1:
        print(
            "error: --warmup must be >= 3 (PowerSGD compresses from the third step) and --steps"
            " >= 1",
            file=sys.stderr,
        )
        return 2
    if args.backend == "nccl" and max(args.ranks) > torch.cuda.device_count():
        print(
            f"error: nccl needs one GPU per rank: {torch.cuda.device_count()} visible, "
            f"--ranks {max(args.ranks)}",
            file=sys.stderr,
        )
        return 2
    print(
        f"machine: {describe_machine(args.backend)}; {Path(sys.argv[0]).name} "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}",
        flush=True,
    )
    for world in args.ranks:
        started = time.perf_counter()
        for spec, parameters, rows in measure(world, args):
            print()
            table = format_table(spec, parameters, world, args.backend, args.powersgd_rank, rows)
            print(table, flush=True)
        print(f"\n({world} ranks took {time.perf_counter() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
