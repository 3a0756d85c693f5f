"""ImageMagick shell loops against our `resize`, side by side on the same images.

    python -m tools.bench_resize                     # 1000 images cycled from tools/photos
    python -m tools.bench_resize --images 500 --workers 2 --photos ~/Pictures
    make bench
    nice -n -15 python -m tools.bench_resize         # on a shared machine (root): less noise

The corpus is the photos folder (default: the 26 photos in tools/photos, shipped with the
repository) copied (cycled) to --images files in a temp dir. Timed, on the same files, writing
256 px short-side JPEGs without enlarging (ImageMagick's `256^>`):

1. the seed's serial loop:
       for f in src/*; do convert "$f" -resize "256^>" out/$(basename $f); done
2. the same with xargs, on N cores (--workers, default all):
       cd src && find . -type f -print0 | xargs -0 -P N -I{} convert {} -resize "256^>" ../out/{}
3. our resize, all cores:    python -m preprocess resize src out --only-shrink --workers N
4. our resize, one core:     ... --workers 1

Our variants run --repeat times (default 3) and the best run counts, the usual way to read
through load from other processes; the ImageMagick loops run once (they take minutes).

and prints images/s and the ratios against the targets: >= 10x (1), >= 5x (2), and (3) >= 0.8 x
cores x (4). It needs the real ImageMagick (`apt-get install imagemagick`); when `convert` is
missing or is not ImageMagick it says so and times only our resize. The machine is shared with
whatever else runs: close other work for stable figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import PIL
from PIL import Image

from core.errors import EXIT_INTERRUPTED, EXIT_USAGE, UserError
from core.imagefiles import is_image_file
from core.logs import configure_logging
from preprocess.progress import default_workers
from preprocess.resize import resize_folder
from preprocess.resize_worker import ResizeOptions

logger = logging.getLogger(__name__)

DEFAULT_PHOTOS = Path(__file__).resolve().parent / "photos"  # tools/photos in this checkout


@dataclasses.dataclass(frozen=True)
class Timing:
    name: str
    command: str
    images: int
    seconds: float  # wall clock
    cpu_seconds: float = 0.0  # user + system time of this process and its waited-for children

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def _version_line(executable: str) -> str:
    try:
        output = subprocess.run(
            [executable, "-version"], check=False, capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return output.splitlines()[0] if output else ""


def _is_script(path: str) -> bool:
    """True for an interpreted wrapper (`#!`), False for a native binary."""
    with open(os.path.realpath(path), "rb") as handle:
        return handle.read(2) == b"#!"


def find_imagemagick() -> tuple[str, str] | None:
    """(path of a real ImageMagick `convert`, its version line), searching all of PATH.

    Some machines put a stand-in `convert` first on PATH; the seed's loop means ImageMagick's.
    """
    first = shutil.which("convert")
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = os.path.join(folder, "convert")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            if _is_script(candidate):
                # A wrapper script (some machines have one that forwards to the real binary)
                # adds an interpreter start to every call and would flatter our ratios.
                continue
            version = _version_line(candidate)
            if "ImageMagick" in version:
                if first and os.path.realpath(first) != os.path.realpath(candidate):
                    print(
                        f"note: the `convert` first on PATH ({first}) is not the ImageMagick "
                        f"binary; using {candidate}"
                    )
                return candidate, version
    return None


def imagemagick_version() -> str | None:
    """The version line of the real ImageMagick `convert` on PATH, else None."""
    found = find_imagemagick()
    return found[1] if found else None


def build_corpus(
    photos: Path, directory: Path, count: int, max_side: int | None = None
) -> list[Path]:
    """Copy the photos (cycled) to `count` files in `directory`.

    With `max_side`, each photo is first shrunk so its long side is at most that (quality 90):
    500 gives ImageNet's typical train image (500x375, ~110 KB), smaller than the shared photos.
    """
    sources = (
        sorted(
            path for path in Path(photos).iterdir() if path.is_file() and is_image_file(path.name)
        )
        if Path(photos).is_dir()
        else []
    )
    if not sources:
        raise UserError(f"{photos}: no photos found: pass --photos DIR with some JPEGs")
    directory.mkdir(parents=True, exist_ok=True)
    if max_side:
        shrunk_dir = directory.parent / f"{directory.name}-max{max_side}"
        shrunk_dir.mkdir(exist_ok=True)
        shrunk = []
        for source in sources:
            with Image.open(source) as image:
                image = image.convert("RGB")
                image.thumbnail((max_side, max_side), Image.LANCZOS)
                target = shrunk_dir / (source.stem + ".jpg")
                image.save(target, "JPEG", quality=90)
            shrunk.append(target)
        sources = shrunk
    paths = []
    for index in range(count):
        source = sources[index % len(sources)]
        target = directory / f"img_{index:05d}{source.suffix.lower()}"
        shutil.copyfile(source, target)
        paths.append(target)
    return paths


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _time_shell(name: str, command: str, images: int, cwd: Path) -> Timing:
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    subprocess.run(["bash", "-c", command], cwd=cwd, check=True, capture_output=True)
    return Timing(
        name, command, images, time.perf_counter() - started, _cpu_seconds() - cpu_started
    )


def _time_resize(
    name: str, src: Path, dst: Path, workers: int, short_side: int, repeat: int = 1
) -> Timing:
    """Best of `repeat` fresh runs (each into an empty folder): the least disturbed by other
    load."""
    seconds = cpu_seconds = float("inf")
    for attempt in range(repeat):
        target = dst.with_name(f"{dst.name}-{attempt}")
        started, cpu_started = time.perf_counter(), _cpu_seconds()
        summary = resize_folder(
            src, target, ResizeOptions(short_side, only_shrink=True), workers=workers
        )
        if time.perf_counter() - started < seconds:
            seconds, cpu_seconds = time.perf_counter() - started, _cpu_seconds() - cpu_started
        shutil.rmtree(target)
    if summary.failed:
        raise RuntimeError(
            f"bench corpus has {summary.failed} undecodable images: {summary.errors[:3]}"
        )
    command = (
        f"python -m preprocess resize src {dst.name} --short-side {short_side} --only-shrink "
        f"--workers {workers}"
    )
    return Timing(name, command, summary.written, seconds, cpu_seconds)


def cpu_model() -> str:
    try:
        for line in subprocess.run(
            ["lscpu"], check=False, capture_output=True, text=True, timeout=10
        ).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return platform.processor() or "unknown CPU"


def run_bench(
    photos: Path,
    count: int,
    workers: int,
    short_side: int = 256,
    repeat: int = 3,
    max_side: int | None = None,
) -> list[Timing]:
    """Time every variant on one corpus; returns the timings (ImageMagick ones only when
    installed)."""
    found = find_imagemagick()
    timings: list[Timing] = []
    with tempfile.TemporaryDirectory(prefix="preprocess-bench-") as temp:
        root = Path(temp)
        src = root / "src"
        build_corpus(photos, src, count, max_side)
        geometry = f'"{short_side}^>"'
        if found is None:
            print(
                "ImageMagick not found: `convert` is missing or is not ImageMagick "
                "(`convert -version` does not say ImageMagick). "
                "Install it with `apt-get install -y imagemagick`; timing our resize only."
            )
        else:
            convert = shlex.quote(found[0])
            (root / "im_serial").mkdir()
            (root / "im_parallel").mkdir()
            timings.append(
                _time_shell(
                    "ImageMagick, serial loop",
                    f'for f in src/*; do {convert} "$f" -resize {geometry} '
                    'im_serial/"$(basename "$f")"; done',
                    count,
                    root,
                )
            )
            timings.append(
                _time_shell(
                    f"ImageMagick, xargs -P {workers}",
                    f"cd src && find . -type f -print0 | xargs -0 -P {workers} -I{{}} "
                    f"{convert} {{}} -resize {geometry} ../im_parallel/{{}}",
                    count,
                    root,
                )
            )
        timings.append(
            _time_resize(
                f"preprocess resize, {workers} workers",
                src,
                root / "ours_parallel",
                workers,
                short_side,
                repeat,
            )
        )
        timings.append(
            _time_resize(
                "preprocess resize, 1 worker", src, root / "ours_serial", 1, short_side, repeat
            )
        )
    return timings


def report(timings: list[Timing], workers: int, count: int, photos: Path) -> str:
    by_name = {timing.name: timing for timing in timings}
    ours = by_name[f"preprocess resize, {workers} workers"]
    single = by_name["preprocess resize, 1 worker"]
    lines = [
        (
            f"corpus: {count} images cycled from {photos}; "
            f"machine: {os.cpu_count()} cores, {cpu_model()}; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        ),
        (
            f"versions: Python {platform.python_version()}, PIL {PIL.__version__}, "
            f"{imagemagick_version() or 'no ImageMagick'}"
        ),
        "",
        (
            f"load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
            f"(other work on the machine slows every variant, ours in parallel most)"
        ),
        "",
        f"{'variant':<34} {'images/s':>9} {'seconds':>8} {'CPU s':>8}",
    ]
    for timing in timings:
        lines.append(
            f"{timing.name:<34} {timing.images_per_second:9.1f} {timing.seconds:8.2f} "
            f"{timing.cpu_seconds:8.2f}"
        )
    lines.append("")
    targets = []
    serial = by_name.get("ImageMagick, serial loop")
    parallel = by_name.get(f"ImageMagick, xargs -P {workers}")
    if serial is not None:
        targets.append(
            ("vs serial ImageMagick loop", ours.images_per_second / serial.images_per_second, 10.0)
        )
    if parallel is not None:
        targets.append(
            (
                f"vs ImageMagick xargs -P {workers}",
                ours.images_per_second / parallel.images_per_second,
                5.0,
            )
        )
    targets.append(
        (
            f"vs {workers} x single-core rate",
            ours.images_per_second / (workers * single.images_per_second),
            0.8,
        )
    )
    for label, ratio, target in targets:
        verdict = "met" if ratio >= target else "MISSED"
        lines.append(f"{label:<34} {ratio:6.2f}x (target >= {target}x: {verdict})")
    if ours.cpu_seconds > 0 and single.cpu_seconds > 0:
        # Load-independent view of the same question: what the parallel path costs per image.
        efficiency = (single.cpu_seconds / single.images) / (ours.cpu_seconds / ours.images)
        lines.append(
            f"{'CPU time per image, 1 vs ' + str(workers) + ' workers':<34} {efficiency:6.2f}x "
            f"(1.0 = no parallel overhead; bounds the wall-clock scaling on an idle machine)"
        )
        if serial is not None and serial.cpu_seconds > 0:
            cost = (serial.cpu_seconds / serial.images) / (single.cpu_seconds / single.images)
            lines.append(f"{'CPU time per image, ImageMagick/us':<34} {cost:6.2f}x")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=1000, help="corpus size (default 1000)")
    parser.add_argument(
        "--workers", type=int, default=None, help="cores for the parallel variants (default all)"
    )
    parser.add_argument(
        "--photos",
        type=Path,
        default=DEFAULT_PHOTOS,
        help="source photos (default tools/photos: the 26 photos shipped with the repository)",
    )
    parser.add_argument(
        "--short-side", type=int, default=256, help="target short side (default 256)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of each of our variants; the best counts (default 3)",
    )
    parser.add_argument(
        "--max-side",
        type=int,
        default=None,
        help="shrink the photos to this long side first (500 = ImageNet's typical 500x375 image)",
    )


def run(args: argparse.Namespace) -> int:
    workers = args.workers or default_workers()
    if args.images < 1:
        raise UserError(f"--images must be >= 1, got {args.images}")
    if args.max_side is not None and args.max_side < args.short_side:
        raise UserError(
            f"--max-side {args.max_side} is below --short-side {args.short_side}: "
            "nothing would shrink"
        )
    timings = run_bench(
        args.photos, args.images, workers, args.short_side, max(1, args.repeat), args.max_side
    )
    corpus = f"{args.photos} (long side <= {args.max_side})" if args.max_side else args.photos
    print(report(timings, workers, args.images, corpus))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench_resize", description=__doc__.split("\n")[0]
    )
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(logging.INFO, "%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: no figures were printed", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
