"""Training throughput: the model step alone, the step fed by a real loader, and DDP's all-reduce
cost.

    python -m tools.bench_train                                  # CPU-sized defaults, ~1-2 minutes
    python -m tools.bench_train --data DST/folders/train --backend folder
    python -m tools.bench_train --image-size 224 --width-mult 1 --classifier-width 4096 \
        --batch-size 256 --precision bf16 --channels-last --compile          # a GPU
    python -m tools.bench_train --data DST/train --backend dali --dali-decode mixed

Prints one line per measurement:
  * step: images/s of forward + backward + SGD step on synthetic uint8 batches already on the
    device (normalization included), i.e. the ceiling the loader has to feed;
  * loader: images/s of the same step fed by `build_loader` (with --data, or a generated folder
    dataset on CPU), and the fraction of wall time spent waiting for the next batch;
  * ddp (CPU only, 2 gloo ranks): time per step with DDP's gradient all-reduce minus the same step
    under `no_sync()`, i.e. what synchronizing the gradients costs per step.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.config import Config, ModelConfig, build_config
from pipeline.data.base import synthetic_batch
from pipeline.distributed import DistInfo, synchronize
from pipeline.errors import EXIT_USAGE, ConfigError
from pipeline.models import ALEXNET_VARIANTS, build_model, check_arch, check_input_size
from pipeline.precision import build_precision, configure_device, resolve_precision
from pipeline.train.step import OptimizerStep, build_model_views, build_optimizer_step


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    on_gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench_train", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--arch",
        default="alexnet",
        help="any model.arch: an alexnet variant or a torchvision classification model "
        "(python -m pipeline.models lists them)",
    )
    parser.add_argument(
        "--image-size", type=int, default=224 if on_gpu else 96, help="train crop, pixels"
    )
    parser.add_argument(
        "--width-mult", type=float, default=1.0 if on_gpu else 0.5, help="alexnet variants only"
    )
    parser.add_argument(
        "--classifier-width", type=int, default=4096 if on_gpu else 512, help="alexnet variants"
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        help="measure the step and the loader at each of these train crops (a resolution "
        "ramp's sizes, e.g. 128 160 192 224) instead of --image-size alone",
    )
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=256 if on_gpu else 32, help="per device")
    parser.add_argument(
        "--steps", type=int, default=50 if on_gpu else 20, help="timed steps per measurement"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=10 if on_gpu else 3,
        help="untimed steps first (compile, cudnn autotune)",
    )
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    parser.add_argument("--channels-last", action="store_true", help="NHWC images and model")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument(
        "--data", type=Path, help="train data for the loader measurement (class folders or shards)"
    )
    parser.add_argument("--backend", default="folder", choices=["folder", "wds", "dali"])
    parser.add_argument("--dali-decode", default="auto", choices=["auto", "mixed", "cpu"])
    parser.add_argument("--num-workers", type=int, default=8 if on_gpu else 2)
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["step", "loader", "ddp"],
        help="measurements to leave out",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def resolve(args) -> tuple[torch.device, str]:
    device = torch.device(
        "cuda"
        if (args.device == "auto" and torch.cuda.is_available()) or args.device == "cuda"
        else "cpu"
    )
    configure_device(device)  # cuDNN autotuning on CUDA, as the trainer does
    return device, resolve_precision(args.precision, device)


def bench_config(args, device: torch.device, precision: str, compile_model: bool) -> Config:
    """The benchmarked run as a Config, for the one step factory: the model, the precision,
    the memory format and torch.compile; every other setting is the default."""
    train = {
        "precision": precision,
        "compile": compile_model,
        "channels_last": args.channels_last,
        "device": device.type,
    }
    return dataclasses.replace(build_config({"train": train}), model=model_config(args))


def local_dist(device: torch.device) -> DistInfo:
    """This process alone, on `device`."""
    return DistInfo(
        device=f"cuda:{torch.cuda.current_device()}" if device.type == "cuda" else "cpu"
    )


def build_bench_step(
    args, device: torch.device, precision: str, dist: DistInfo | None = None
) -> OptimizerStep:
    """The trainer's optimizer step (normalize → forward → loss → backward → SGD step), from the
    one factory, around a fresh benchmarked model; inside DDP when `dist` is a process group's
    (then never compiled). Only the optimizer is the bench's own: SGD at a fixed lr."""
    ddp = dist is not None and dist.is_distributed
    cfg = bench_config(args, device, precision, compile_model=args.compile and not ddp)
    dist = dist or local_dist(device)
    model = build_model(cfg.model, args.num_classes, args.image_size).to(
        device, memory_format=memory_format(args)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    views = build_model_views(cfg, dist, model, ddp=ddp)
    return build_optimizer_step(
        cfg, dist, views, build_precision(cfg.train.precision, device), optimizer=optimizer
    )


def memory_format(args) -> torch.memory_format:
    return torch.channels_last if args.channels_last else torch.contiguous_format


def bench_batch(args, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed synthetic batch at args.image_size, as a loader hands it over."""
    return synthetic_batch(
        args.batch_size, args.image_size, args.num_classes, device, memory_format(args)
    )


def model_config(args) -> ModelConfig:
    """The benchmarked model: the width knobs apply to the alexnet variants only."""
    check_arch(args.arch)
    if args.arch in ALEXNET_VARIANTS:
        return ModelConfig(
            arch=args.arch, width_mult=args.width_mult, classifier_width=args.classifier_width
        )
    return ModelConfig(arch=args.arch)


def peak_memory_gb(device: torch.device) -> float:
    """Peak GPU memory allocated since the last reset, or this process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


def measure_step(args, device, precision) -> tuple[float, float]:
    """(images/s, peak memory GB) of the step on synthetic batches already on the device."""
    take_step = build_bench_step(args, device, precision)
    batches = itertools.repeat(bench_batch(args, device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(args.warmup):
        take_step(batches, step)
    synchronize(device)
    started = time.perf_counter()
    for step in range(args.warmup, args.warmup + args.steps):
        take_step(batches, step)
    synchronize(device)
    return args.steps * args.batch_size / (time.perf_counter() - started), peak_memory_gb(device)


def write_folder_dataset(
    root: Path, classes: int = 8, per_class: int = 80, size: int = 160
) -> Path:
    """A small class-folder dataset of random-texture JPEGs for the loader measurement on CPU."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for index in range(classes):
        folder = root / f"n{index:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(per_class):
            pixels = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).resize((size + number % 40, size), Image.BILINEAR).save(
                folder / f"img_{number}.JPEG", quality=90
            )
    return root


def measure_loader(args, device, precision, data_dir: Path) -> tuple[float, float, int]:
    """(images/s, data-wait fraction, steps) for the step fed by build_loader."""
    from pipeline.data import build_loader

    cfg = build_config(
        {
            "data": {
                "backend": args.backend,
                "train_dir": str(data_dir),
                "val_dir": str(data_dir),
                "global_batch_size": args.batch_size,
                "num_workers": args.num_workers,
                "train_crop": args.image_size,
                "val_crop": args.image_size,
                "val_resize": max(args.image_size, int(args.image_size * 8 / 7)),
                "dali_decode": args.dali_decode,
                "pin_memory": device.type == "cuda",
            },
            "train": {"channels_last": args.channels_last, "device": device.type},
        }
    )
    loader = build_loader(cfg, "train", local_dist(device))
    take_step = build_bench_step(args, device, precision)
    loader.set_epoch(0)
    total_steps = min(len(loader), args.warmup + args.steps)
    if total_steps <= args.warmup:
        raise SystemExit(
            f"error: {data_dir} gives {len(loader)} batches of {args.batch_size}: need more than "
            f"--warmup {args.warmup}"
        )
    wait = 0.0
    iterator = iter(loader)
    for step in range(total_steps):
        if step == args.warmup:
            synchronize(device)
            started = time.perf_counter()
            wait = 0.0
        before = time.perf_counter()
        images, labels = next(iterator)
        wait += time.perf_counter() - before
        take_step(iter([(images, labels)]), step)
    synchronize(device)
    elapsed = time.perf_counter() - started
    timed = total_steps - args.warmup
    return timed * args.batch_size / elapsed, wait / elapsed, timed


def _ddp_worker(rank: int, world_size: int, port: int, args, queue) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(1)
    from pipeline.distributed import init_distributed, shutdown

    dist = init_distributed("cpu")
    take_step = build_bench_step(args, torch.device("cpu"), "fp32", dist)
    ddp = take_step.model.ddp
    batches = itertools.repeat(bench_batch(args, torch.device("cpu")))
    # Alternate synced and no_sync steps so both see the same machine load; report medians.
    for step in range(args.warmup):
        with ddp.no_sync():
            take_step(batches, 2 * step)
        take_step(batches, 2 * step + 1)
    per_step: dict[str, list[float]] = {"ddp": [], "no_sync": []}
    for step in range(args.steps):
        for name, context in (("no_sync", ddp.no_sync), ("ddp", contextlib.nullcontext)):
            torch.distributed.barrier()
            started = time.perf_counter()
            with context():
                take_step(batches, step)
            per_step[name].append(time.perf_counter() - started)
    timings = {name: statistics.median(values) for name, values in per_step.items()}
    if dist.is_main:
        parameters = take_step.model.module.parameters()
        gradient_bytes = sum(p.numel() * p.element_size() for p in parameters)
        queue.put((timings["ddp"], timings["no_sync"], gradient_bytes))
    shutdown(dist)


def measure_ddp(args) -> tuple[float, float, int]:
    """(step s with all-reduce, step s without, gradient bytes) for 2 gloo ranks on CPU."""
    import torch.multiprocessing as mp

    with __import__("socket").socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.start_processes(
        _ddp_worker, args=(2, port, args, queue), nprocs=2, join=True, start_method="spawn"
    )
    return queue.get()


def describe_machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (
        f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads), "
        f"torch {torch.__version__}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device, precision = resolve(args)
    sizes = args.sizes or [args.image_size]
    try:
        check_arch(args.arch)
        for size in sizes:
            check_input_size(size, "--sizes" if args.sizes else "--image-size", args.arch)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    widths = (
        f" width {args.width_mult} classifier {args.classifier_width}"
        if args.arch in ALEXNET_VARIANTS
        else ""
    )
    shape = (
        f"{args.arch}{widths}, {'/'.join(map(str, sizes))} px, batch {args.batch_size}, "
        f"{precision}{', channels_last' if args.channels_last else ''}"
        f"{', compile' if args.compile else ''}"
    )
    print(f"machine: {describe_machine(device)}; model: {shape}", flush=True)
    results: dict = {
        "machine": describe_machine(device),
        "model": shape,
        "torch": torch.__version__,
    }
    with tempfile.TemporaryDirectory(prefix="bench-train-") as temp:
        data_dir = args.data
        if data_dir is None and "loader" not in args.skip:
            data_dir = write_folder_dataset(Path(temp) / "train")
            args.backend = "folder"
        by_size = []
        for size in sizes:
            args.image_size = size
            by_size.append(measure_size(args, device, precision, data_dir))
    # the single-size keys, as before --sizes existed, hold the first size's figures
    results |= {key: value for key, value in by_size[0].items() if key != "image_size"}
    if args.sizes:
        results["sizes"] = by_size
    if "ddp" not in args.skip and device.type == "cpu":
        with_sync, without, gradient_bytes = measure_ddp(args)
        results["ddp"] = {
            "step_s_all_reduce": with_sync,
            "step_s_no_sync": without,
            "gradient_bytes": gradient_bytes,
        }
        print(
            f"ddp:    2 gloo ranks at {args.image_size} px: {1000 * with_sync:.1f} ms/step with "
            f"all-reduce, {1000 * without:.1f} ms without (no_sync): all-reduce costs "
            f"{1000 * (with_sync - without):.1f} ms/step for {gradient_bytes / 1e6:.1f} MB of "
            "gradients",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


def measure_size(args, device, precision, data_dir: Path | None) -> dict:
    """The step and the loader measurements at args.image_size, printed as they finish."""
    size = args.image_size
    result: dict = {"image_size": size}
    if "step" not in args.skip:
        rate, peak = measure_step(args, device, precision)
        result["step_images_per_s"], result["step_peak_memory_gb"] = rate, peak
        memory = "peak GPU memory" if device.type == "cuda" else "peak process RSS"
        print(
            f"step:   {rate:9.1f} images/s at {size} px (synthetic uint8 batches on "
            f"{device.type}), {memory} {peak:.2f} GB",
            flush=True,
        )
    if "loader" not in args.skip:
        rate, wait, steps = measure_loader(args, device, precision, data_dir)
        result["loader"] = {
            "backend": args.backend + (f"-{args.dali_decode}" if args.backend == "dali" else ""),
            "images_per_s": rate,
            "data_wait_frac": wait,
            "steps": steps,
            "num_workers": args.num_workers,
        }
        print(
            f"loader: {rate:9.1f} images/s at {size} px with the {args.backend} loader "
            f"({args.num_workers} workers, {steps} steps), data wait {100 * wait:.1f}% of wall "
            "time",
            flush=True,
        )
    return result


if __name__ == "__main__":
    sys.exit(main())
