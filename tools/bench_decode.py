"""CPU milliseconds per image of one decode + crop + resize (+ flip), on one core: Pillow's
full-decode path (`jpeg.decode_full`, what `decode_train` / `decode_val` ran before they took the
ROI path) against the ROI decoder (`jpeg.decode_crop`), for the very same boxes.

    python -m tools.bench_decode                        # 224 128 160 192 px and val, 5 rounds
    python -m tools.bench_decode --sizes 224 --rounds 3 --repeats 20 --json decode.json

The images: tools/photos (or --photos DIR) resized to 256 px on the short side by
`preprocess.images.resize_image`, as the shards hold them. Each case decodes every image
--repeats times with the boxes that seeds 0..repeats-1 draw (`sample_crop_box`, then the flip),
timed with `time.process_time` (this process's CPU, one thread), and takes its turn in every
round; the best round counts, so other jobs' load hits every case alike. The ROI case includes
its header probe, the box draw and the write into a reused output buffer. Figures go to
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data import jpeg
from pipeline.data.transforms import (
    Augmentation,
    sample_crop_box,
    val_geometry,
)
from preprocess.images import resize_image

DEFAULT_PHOTOS = Path(__file__).resolve().parent / "photos"


def load_images(photos: Path, short_side: int = 256) -> list[bytes]:
    """The photos as 256 px JPEGs (what `preprocess prepare` writes into the shards)."""
    sources = sorted(path for path in photos.iterdir() if path.suffix.lower() in (".jpg", ".jpeg"))
    if not sources:
        raise SystemExit(f"no JPEG photos in {photos}: pass --photos DIR")
    return [resize_image(path.read_bytes(), short_side)[0] for path in sources]


def pillow_decode(data: bytes, box, size: int, flip: bool, out: np.ndarray, header) -> None:
    """Pillow's full-decode path (`jpeg.decode_full`: what decode_train ran before the ROI
    decoder)."""
    jpeg.decode_full(data, box, size, flip, out)


def roi_decode(data: bytes, box, size: int, flip: bool, out: np.ndarray, header) -> None:
    jpeg.decode_crop(data, box, size, flip, out=out, header=header)


def train_case(decode, images: list[bytes], size: int, repeats: int) -> Callable[[], int]:
    """`decode` (pillow_decode or roi_decode) over the train boxes of seeds 0..repeats-1; the
    header probe and the output buffer are the same for both."""
    aug = Augmentation()
    out = np.empty((size, size, 3), dtype=np.uint8)

    def run() -> int:
        for seed in range(repeats):
            for data in images:
                header = jpeg.probe(data)
                rng = random.Random(seed)
                box = sample_crop_box(header.width, header.height, aug.scale, aug.ratio, rng)
                flip = rng.random() < aug.flip_prob
                decode(data, box, size, flip, out, header)
        return repeats * len(images)

    return run


def val_case(decode, images: list[bytes], repeats: int) -> Callable[[], int]:
    """`decode` over the val centre crop of every image, `repeats` times."""
    aug = Augmentation()
    out = np.empty((aug.val_crop, aug.val_crop, 3), dtype=np.uint8)

    def run() -> int:
        for _ in range(repeats):
            for data in images:
                header = jpeg.probe(data)
                corners = val_geometry(header.width, header.height, aug.val_resize, aug.val_crop)
                decode(data, jpeg.box_from_corners(*corners), aug.val_crop, False, out, header)
        return repeats * len(images)

    return run


def full_decode(images: list[bytes], repeats: int) -> Callable[[], int]:
    """Pillow's decode of the whole image alone: what every full-decode path pays first."""

    def run() -> int:
        for _ in range(repeats):
            for data in images:
                with Image.open(io.BytesIO(data)) as image:
                    image.load()
        return repeats * len(images)

    return run


def build_cases(images: list[bytes], sizes: list[int], repeats: int) -> dict[str, Callable]:
    cases: dict[str, Callable] = {"full decode (Pillow)": full_decode(images, repeats)}
    for size in sizes:
        cases[f"train {size} pillow"] = train_case(pillow_decode, images, size, repeats)
        if jpeg.AVAILABLE:
            cases[f"train {size} roi"] = train_case(roi_decode, images, size, repeats)
    cases["val 224 pillow"] = val_case(pillow_decode, images, repeats)
    if jpeg.AVAILABLE:
        cases["val 224 roi"] = val_case(roi_decode, images, repeats)
    return cases


def measure(cases: dict[str, Callable], rounds: int) -> dict[str, list[float]]:
    """CPU ms per image of each case in each round, the cases taking turns."""
    measured: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, run in cases.items():
            start = time.process_time()
            count = run()
            measured[name].append(1000 * (time.process_time() - start) / count)
    return measured


def report(measured: dict[str, list[float]]) -> dict[str, dict]:
    """One line per case: its best round, and the ROI case's ratio to the Pillow case."""
    best = {name: min(values) for name, values in measured.items()}
    results = {}
    for name, value in best.items():
        ratio = ""
        if name.endswith(" roi"):
            prefix = name.removesuffix(" roi")
            pillow = best[prefix + " pillow"]
            ratio = f"  {pillow / value:.2f}x less CPU than Pillow's path"
            results[name] = {"cpu_ms_per_image": value, "ratio": pillow / value}
        else:
            results[name] = {"cpu_ms_per_image": value}
        print(f"{name:>24}: {value:6.3f} CPU ms/image{ratio}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench_decode", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 128, 160, 192])
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best counts (5)")
    parser.add_argument(
        "--repeats", type=int, default=20, help="boxes per image and round (seeds 0..N-1; 20)"
    )
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    images = load_images(args.photos)
    print(
        f"# {len(images)} photos at 256 px short side x {args.repeats} boxes, {args.rounds} "
        f"rounds, one core (process_time); ROI decoder "
        f"{'built' if jpeg.AVAILABLE else 'UNAVAILABLE: ' + jpeg.UNAVAILABLE_REASON}; "
        f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs, {platform.node()}, "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}"
    )
    measured = measure(build_cases(images, args.sizes, args.repeats), args.rounds)
    results = report(measured)
    if args.json:
        args.json.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results})
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
