"""Loader throughput, images/s per backend and train size on the same data and cores, next to the
seed's baseline.

    python -m tools.bench_loader  # 4096 images, 2 workers, batches of 64, 3 x 8 s each, 224 px
    python -m tools.bench_loader --images 2048 --workers 2 --batch-size 64 --seconds 10 --rounds 2
    python -m tools.bench_loader --backends baseline folder wds
    python -m tools.bench_loader --backends ffcv folder wds --sizes 128 160 192 224
    python -m tools.bench_loader --sizes 128 160 192 224  # a resolution ramp's sizes
    python -m tools.bench_loader --auto-augment trivial  # with TrivialAugmentWide
    python -m tools.bench_loader --backends decode,folder,folder-processes,wds,wds-processes
    python -m tools.bench_loader --split val --backends decode,folder,folder-pillow
    python -m tools.bench_loader --source loopback       # wds from a URL, cold/warm (bench_source)

The data: the real photos in tools/photos (or --photos DIR), each replicated as random
80–100 % crops resized to 256 px on the short side (what `preprocess prepare` makes: with a
restart marker after every MCU, core/jpegfile.py), as class folders and as WebDataset shards,
built once under --cache-dir and reused; and `folders-plain`, the same images encoded without
the markers (the same coefficients, so the same pixels), which FFCV reads and `folder-plain`
times (a folder of JPEGs that preprocess did not write).

The baseline is the seed's loader: torchvision ImageFolder + Compose([RandomResizedCrop(SIZE),
RandomHorizontalFlip(), ToTensor(), Normalize()]) + DataLoader(shuffle=True). Ours are
`build_loader(cfg, "train", ...)` with data.train_crop=SIZE, the same batch size and workers,
iterated to the training device (normalization then happens on the device, so it is not in the
loader's time). One line per backend and size. Each measurement skips a warm-up (the workers'
first batches), then counts images for --seconds. Every (backend, size) takes its turn for
--rounds rounds and the best round counts, so load from other jobs on a shared machine hits all
of them alike. It also reports CPU milliseconds per
image (this process, its threads and its worker processes), which other jobs barely change.
`decode` is one core's cost with no loader: decode_train (decode, crop, resize, flip) of each file
in a plain loop; every other line gives its CPU per image as a multiple of it. The variants
`folder-processes` / `wds-processes` and `folder-threads` / `wds-threads` set data.worker_kind
(`folder` and `wds` take `auto`: threads up to 6 workers), `folder-pillow` / `wds-pillow`
decode whole images with Pillow (data.roi_decode=false: the path before the ROI decoder).
`--split val` times the val path.
`ffcv` runs FFCV 1.0.2's loader (tools.bench_ffcv, in .venv-ffcv from `make bench-peers`) on the
same images without the markers (a full decode, FFCV's, is ~5 % cheaper without them), one
round in its own process at each turn, and every other backend's line gives its ratio to
FFCV's; where FFCV is not built, one line says so and the rest runs.
Figures and the machine they came from are recorded in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import logging
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

from core.cputime import process_tree_cpu_seconds
from core.logs import configure_logging
from tools import bench_source

logger = logging.getLogger(__name__)

DEFAULT_PHOTOS = Path(__file__).resolve().parent / "photos"  # tools/photos in this checkout
DEFAULT_CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    / "imagenet-pipeline"
    / "bench-loader"
)
BACKENDS = (
    "baseline",
    "ffcv",
    "decode",
    "folder",
    "folder-processes",
    "folder-threads",
    "folder-pillow",
    "folder-plain",
    "wds",
    "wds-processes",
    "wds-threads",
    "wds-pillow",
    "dali-cpu",
    "dali-mixed",
)
# folder and wds variants: data.worker_kind / data.roi_decode overrides
VARIANTS = {
    "": {},
    "processes": {"worker_kind": "processes"},
    "threads": {"worker_kind": "threads"},
    "pillow": {"roi_decode": False},  # Pillow's whole-image decode; auto picks processes
    "plain": {},  # folders-plain: the files without restart markers (whole-file ROI path)
}
FFCV_PYTHON = Path(".venv-ffcv") / "bin" / "python"  # built by `make bench-peers`
FFCV_RESULT = "ffcv-result "  # tools.bench_ffcv's machine-readable line


def val_shards(root: Path) -> Path:
    """root/shards/val: the benchmark's images sharded as a val split (manifest order), built
    once on first use."""
    from preprocess.cli import main as preprocess_main

    shards = root / "shards" / "val"
    if not (shards / "manifest.json").is_file():
        command = ["shard", str(root / "folders" / "train"), str(shards), "--split", "val"]
        if preprocess_main([*command, "--shard-size", "500"]) != 0:
            raise SystemExit("preprocess shard --split val failed: see the lines above")
    return shards


def build_dataset(
    photos: Path, cache_dir: Path, num_images: int, num_classes: int = 16, seed: int = 0
) -> Path:
    """cache_dir/images-N-rstI/{folders/train, folders-plain/train, shards/train}: 256 px JPEGs
    from the photos (I: preprocess's restart interval; folders-plain: the same images encoded
    without the markers); reused if complete."""
    from PIL import Image

    from core.jpegfile import RESTART_INTERVAL
    from preprocess.cli import main as preprocess_main
    from preprocess.images import resize_image

    root = cache_dir / f"images-{num_images}-rst{RESTART_INTERVAL}"
    done = root / "complete.json"
    if done.is_file():
        return root
    sources = sorted(path for path in photos.iterdir() if path.suffix.lower() in (".jpg", ".jpeg"))
    if not sources:
        raise SystemExit(f"no JPEG photos in {photos}: pass --photos DIR")
    rng = random.Random(seed)
    folders = root / "folders" / "train"
    plain = root / "folders-plain" / "train"
    decoded = [Image.open(path).convert("RGB") for path in sources]
    for index in range(num_images):
        image = decoded[index % len(decoded)]
        width, height = image.size
        fraction = rng.uniform(0.8, 1.0)
        crop_width, crop_height = int(width * fraction), int(height * fraction)
        left, top = rng.randint(0, width - crop_width), rng.randint(0, height - crop_height)
        crop = image.crop((left, top, left + crop_width, top + crop_height))
        buffer = io.BytesIO()
        crop.save(buffer, format="JPEG", quality=95)
        data, _ = resize_image(buffer.getvalue(), 256)
        without, _ = resize_image(buffer.getvalue(), 256, restart_interval=0)
        for top, layout in ((folders, data), (plain, without)):
            folder = top / f"n{index % num_classes:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"bench_{index:07d}.JPEG").write_bytes(layout)
    status = preprocess_main(
        [
            "shard",
            str(folders),
            str(root / "shards" / "train"),
            "--split",
            "train",
            "--shard-size",
            "500",
        ]
    )
    if status != 0:
        raise SystemExit(f"preprocess shard failed with exit status {status}")
    done.write_text(json.dumps({"images": num_images, "photos": str(photos)}))
    return root


def time_iterable(make_batches, seconds: float, warmup_batches: int) -> tuple[float, int, float]:
    """(images/s, images counted, CPU ms per image) over `seconds` after `warmup_batches`."""
    counted = 0
    seen_batches = 0
    start = start_cpu = None
    epoch = 0
    while True:
        for images, _ in make_batches(epoch):
            seen_batches += 1
            if seen_batches == warmup_batches:
                start, start_cpu = time.perf_counter(), process_tree_cpu_seconds()
                continue
            if start is not None:
                counted += images.shape[0]
                elapsed = time.perf_counter() - start
                if elapsed >= seconds:
                    cpu_ms = 1000 * (process_tree_cpu_seconds() - start_cpu) / counted
                    return counted / elapsed, counted, cpu_ms
        epoch += 1


def baseline_batches(
    root: Path, batch_size: int, workers: int, device: torch.device, size: int = 224
):
    """The seed's loader: ImageFolder + torchvision transforms (float, normalized on the CPU)."""
    from torchvision import datasets, transforms

    dataset = datasets.ImageFolder(
        str(root / "folders" / "train"),
        transforms.Compose(
            [
                transforms.RandomResizedCrop(size),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ]
        ),
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=workers > 0,
    )

    def batches(epoch):
        for images, labels in loader:
            yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    return batches


def our_batches(
    root: Path,
    backend: str,
    batch_size: int,
    workers: int,
    device: torch.device,
    size: int = 224,
    auto_augment: str = "none",
    split: str = "train",
):
    """`build_loader(cfg, split, ...)` for `backend` (folder, wds, dali and their variants) on the
    benchmark's class folders or shards (the val split reads the train files: the val path)."""
    from pipeline.config import build_config
    from pipeline.data import build_loader
    from pipeline.distributed import DistInfo

    data_backend, _, variant = backend.partition("-")
    decode, overrides = "auto", {}
    if data_backend == "dali":
        decode = variant or "auto"
    else:
        overrides = VARIANTS[variant]
    layout = "shards" if data_backend == "wds" else "folders"
    layout += "-plain" if variant == "plain" else ""
    val_dir = val_shards(root) if layout == "shards" and split == "val" else root / layout / "train"
    cfg = build_config(
        {
            "data": {
                "backend": data_backend,
                "train_dir": str(root / layout / "train"),
                "val_dir": str(val_dir),
                "global_batch_size": batch_size,
                "num_workers": workers,
                "dali_decode": decode,
                "train_crop": size,
                "val_crop": size,
                "val_resize": max(size, 256),
                "auto_augment": auto_augment,
                **overrides,
            },
        }
    )
    loader = build_loader(cfg, split, DistInfo(device=str(device)))

    def batches(epoch):
        loader.set_epoch(epoch)
        return iter(loader)

    return batches


def decode_batches(root: Path, batch_size: int, size: int = 224, split: str = "train"):
    """One core's cost: each file read from disk in a random order per epoch and decoded into
    one reused uint8 batch, in a plain loop of this process: no loader, no threads. What every
    loader's CPU per image is compared with. Train runs what the folder and wds backends run per
    batch: `decode_train_batch` (one C call: read, draws, ROI decode), then `decode_train` for the
    positions it leaves; val runs `decode_val` per file."""
    import numpy as np

    from pipeline.config import build_config
    from pipeline.data.files import list_class_folders
    from pipeline.data.transforms import (
        Augmentation,
        decode_train,
        decode_train_batch,
        decode_val,
        sample_rng,
    )

    _, paths, labels = list_class_folders(root / "folders" / "train")
    cfg = build_config({"data": {"train_crop": size, "val_crop": size}})
    aug = Augmentation.from_config(cfg.data)
    images = np.empty((batch_size, size, size, 3), dtype=np.uint8)

    def batches(epoch):
        order = random.Random(epoch).sample(range(len(paths)), len(paths))
        for first in range(0, len(order) - batch_size + 1, batch_size):
            keys = order[first : first + batch_size]
            left = range(batch_size)
            if split == "train":
                sources = [paths[i] for i in keys]
                left = decode_train_batch(sources, aug, 0, epoch, np.asarray(keys), size, images)
            for position in left:
                index = keys[position]
                if split == "train":
                    rng = sample_rng(0, epoch, index)
                    decode_train(paths[index], aug, rng, size, out=images[position])
                else:
                    decode_val(paths[index], aug, out=images[position])
            yield torch.from_numpy(images), torch.as_tensor(labels[order[first]])

    return batches


def ffcv_round(root: Path, batch_size: int, workers: int, size: int):
    """A function of the seconds running one round of FFCV's loader (tools.bench_ffcv, in FFCV's
    own venv, on the same images without restart markers): (images/s, CPU ms per image)."""

    def measure(seconds: float) -> tuple[float, float]:
        command = [
            str(FFCV_PYTHON),
            "-m",
            "tools.bench_ffcv",
            "--folders",
            str(root / "folders-plain" / "train"),
            *("--size", str(size), "--batch-size", str(batch_size)),
            *("--workers", str(workers), "--seconds", str(seconds), "--rounds", "1"),
        ]
        finished = subprocess.run(command, capture_output=True, text=True, check=False)
        for line in finished.stdout.splitlines():
            if line.startswith(FFCV_RESULT):
                result = json.loads(line[len(FFCV_RESULT) :])
                return result["images_per_s"], result["cpu_ms_per_image"]
        tail = (finished.stderr or finished.stdout).strip().splitlines()[-1:]
        raise SystemExit(
            f"tools.bench_ffcv gave no result line (exit {finished.returncode}): {tail}"
        )

    return measure


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.backends = split_commas(args.backends)
    unknown = sorted(set(args.backends) - set(BACKENDS))
    if unknown:
        parser.error(f"--backends: {', '.join(unknown)} not among {', '.join(BACKENDS)}")
    try:
        args.sizes = [int(size) for size in split_commas(args.sizes)]
    except ValueError:
        parser.error(f"--sizes: expected pixels such as 128,160,192,224, got {args.sizes}")
    configure_logging(logging.WARNING, "%(levelname)s %(name)s: %(message)s", None)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    root = build_dataset(args.photos, args.cache_dir, args.images)
    # building runs preprocess's commands, which log at INFO: the measurement logs warnings only
    configure_logging(logging.WARNING, "%(levelname)s %(name)s: %(message)s", None)
    print_header(args, root, device)
    if args.source:  # the wds loader over a URL, cold and warm, beside local disk
        scratch = bench_source.make_scratch()
        loaders, servers = bench_source.source_loaders(args, root, device, scratch)
    else:
        loaders = build_loaders(args, root, device)
    # the start-up's objects out of the cyclic collector's way, as the trainer does before its
    # first epoch (FFCV's process, tools.bench_ffcv, freezes after its warm-up epoch too)
    gc.freeze()
    warmup = 2 * max(1, args.workers) + 2
    rounds = measure_rounds(loaders, args.seconds, args.rounds, warmup)
    results = report_results(rounds)
    if args.source:
        bench_source.report_ratios(results, args.sizes)
        bench_source.stop_servers(servers, scratch)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1
            )
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench_loader", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--images", type=int, default=4096, help="benchmark images (default 4096)")
    parser.add_argument(
        "--workers", type=int, default=2, help="loader workers / DALI threads (default 2)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument(
        "--seconds",
        type=float,
        default=8.0,
        help="measured seconds per backend and round (default 8)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds; each backend's best round is reported (default 3)",
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        default=list(BACKENDS),
        help=f"any of {', '.join(BACKENDS)}, space- or comma-separated (default: all)",
    )
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=["224"],
        help="train crop sizes, pixels, one line each (default 224)",
    )
    parser.add_argument(
        "--split",
        default="train",
        choices=["train", "val"],
        help="train (RandomResizedCrop + flip) or val (resize + centre crop) (default train)",
    )
    parser.add_argument(
        "--auto-augment",
        default="none",
        choices=["none", "trivial", "imagenet"],
        help="data.auto_augment for our backends (the baseline never augments; default none)",
    )
    parser.add_argument(
        "--photos",
        type=Path,
        default=DEFAULT_PHOTOS,
        help="source JPEGs (default: tools/photos)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE,
        help="where the benchmark data is built once",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    bench_source.add_source_argument(parser)
    return parser


def print_header(args: argparse.Namespace, root: Path, device: torch.device) -> None:
    """The run's settings and machine, as a comment line above the results."""
    print(
        f"# {args.images} images (256 px short side) under {root}; batch {args.batch_size}, "
        f"{args.workers} workers, {args.split} split, {args.rounds} rounds of "
        f"{args.seconds:.0f} s per backend and size, sizes {' '.join(map(str, args.sizes))} px, "
        f"auto_augment {args.auto_augment}, "
        f"device {device}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, torch "
        f"{torch.__version__}, {platform.node()}, {time.strftime('%Y-%m-%d %H:%M %Z')}"
    )


def build_loaders(args: argparse.Namespace, root: Path, device: torch.device) -> dict:
    """(backend, size) -> a function of the epoch giving batches; dali-mixed only on CUDA."""
    loaders = {}
    for backend in args.backends:
        if backend == "dali-mixed" and device.type != "cuda":
            print(f"{backend:>10}: skipped (needs CUDA)")
            continue
        if args.split == "val" and backend in ("baseline", "ffcv"):
            print(f"{backend:>10}: skipped (train only)")
            continue
        if backend == "ffcv" and not FFCV_PYTHON.is_file():
            print(f"{backend:>10}: skipped (FFCV is not built here: `make bench-peers` builds it)")
            continue
        for size in args.sizes:
            if backend == "ffcv":
                loaders[backend, size] = ffcv_round(root, args.batch_size, args.workers, size)
            elif backend == "decode":
                loaders[backend, size] = decode_batches(root, args.batch_size, size, args.split)
            elif backend == "baseline":
                loaders[backend, size] = baseline_batches(
                    root, args.batch_size, args.workers, device, size
                )
            else:
                loaders[backend, size] = our_batches(
                    root,
                    backend,
                    args.batch_size,
                    args.workers,
                    device,
                    size,
                    args.auto_augment,
                    args.split,
                )
    return loaders


def measure_rounds(
    loaders: dict, seconds: float, num_rounds: int, warmup: int
) -> dict[tuple[str, int], list[tuple[float, float]]]:
    """(backend, size) -> (images/s, CPU ms/image) of each round.

    Every (backend, size) takes its turn, round after round, so a change in the machine's load
    hits all of them; the best round of each is the least disturbed one.
    """
    rounds: dict[tuple[str, int], list[tuple[float, float]]] = {key: [] for key in loaders}
    for round_index in range(num_rounds):
        for (backend, size), batches in loaders.items():
            if backend == "ffcv":
                rate, cpu_ms = batches(seconds)  # FFCV's own process, one round
            else:
                rate, _, cpu_ms = time_iterable(batches, seconds, warmup)
            rounds[backend, size].append((rate, cpu_ms))
            logger.warning(
                "round %d %s %d px: %.0f images/s, %.2f CPU ms/image",
                round_index,
                backend,
                size,
                rate,
                cpu_ms,
            )
    return rounds


def report_results(rounds: dict[tuple[str, int], list[tuple[float, float]]]) -> dict[str, dict]:
    """The best round of each (backend, size), printed one line each against the baseline and
    FFCV (where they ran)."""
    results: dict[str, dict] = {}
    for (backend, size), measured in rounds.items():
        results[f"{backend}@{size}"] = {
            "backend": backend,
            "size": size,
            "images_per_s": max(rate for rate, _ in measured),
            "cpu_ms_per_image": min(cpu_ms for _, cpu_ms in measured),
            "rounds": measured,
        }
    for result in results.values():
        backend, size = result["backend"], result["size"]
        rate, cpu_ms = result["images_per_s"], result["cpu_ms_per_image"]
        ratio = ""
        one_core = results.get(f"decode@{size}")
        if one_core is not None and backend != "decode":
            ratio += f"  {cpu_ms / one_core['cpu_ms_per_image']:.2f}x one core's decode"
        for reference in ("baseline", "ffcv"):
            base = results.get(f"{reference}@{size}")
            if base is not None and backend not in ("baseline", reference):
                ratio += (
                    f"  {rate / base['images_per_s']:.2f}x {reference} images/s, "
                    f"{base['cpu_ms_per_image'] / cpu_ms:.2f}x less CPU per image than {reference}"
                )
        print(
            f"{backend:>10} {size:4d} px: {rate:8.0f} images/s, {cpu_ms:5.2f} CPU ms/image{ratio}",
            flush=True,
        )
    return results


def split_commas(values: list[str]) -> list[str]:
    """`--backends ffcv,folder wds` → ["ffcv", "folder", "wds"]."""
    return [part for value in values for part in value.split(",") if part]


if __name__ == "__main__":
    sys.exit(main())
