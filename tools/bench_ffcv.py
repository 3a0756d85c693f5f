"""FFCV 1.0.2's loader on the loader benchmark's own JPEGs: CPU ms per image and images/s.

Runs inside FFCV's venv (`make bench-peers` builds .venv-ffcv), from the repository root:

    .venv-ffcv/bin/python -m tools.bench_ffcv \
        --folders ~/.cache/imagenet-pipeline/bench-loader/images-2048/folders/train
    .venv-ffcv/bin/python -m tools.bench_ffcv --folders DIR --size 160 --seconds 10 --rounds 2
    .venv-ffcv/bin/python -m tools.bench_ffcv --check-bytes a.JPEG b.JPEG   # the .beton keeps them

--folders is the class-folder tree that `tools.bench_loader` builds (256 px short side JPEGs,
one folder per class). Its files go into a .beton beside it (built once) as they are: FFCV's
RGBImageField re-encodes every image (it decodes to an array first, caps the long side at
max_resolution, then writes raw pixels or a new JPEG at jpeg_quality), so here each field
stores the original bytes as a 'jpg' entry, and one image is read back and compared byte for
byte. Both loaders then decode the very same JPEGs.

The loader is FFCV ImageNet example's train pipeline up to the uint8 batch:
RandomResizedCropRGBImageDecoder(SIZE) → RandomHorizontalFlip → ToTensor → ToTorchImage, labels
IntDecoder → ToTensor; batch 64, 2 workers (FFCV's workers are threads), random order,
drop_last. One warm-up epoch (numba compiles the pipeline), then --seconds of batches per
round; the best round counts. CPU is this process's (all its threads) and its children's, as
tools.bench_loader counts it. The last line is machine-readable:

    ffcv-result {"images_per_s": ..., "cpu_ms_per_image": ..., ...}
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import struct
import sys
import time
import types
from pathlib import Path

import numpy as np

from core.cputime import process_tree_cpu_seconds

RESULT_PREFIX = "ffcv-result "
_START_OF_FRAME = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(height, width) from a JPEG's start-of-frame marker, without decoding."""
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise ValueError(f"not a JPEG marker at byte {position}")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        if marker in _START_OF_FRAME:
            height, width = struct.unpack(">HH", data[position + 5 : position + 9])
            return height, width
        position += 2 + length
    raise ValueError("no start-of-frame marker: not a JPEG")


def original_jpeg_field():
    """An RGBImageField that stores each sample's JPEG bytes as they are ('jpg' mode).

    An instance whose `encode` is replaced, not a subclass: FFCV's writer records a field's
    type id by exact type, and would write a subclass as unknown (255), which its reader
    cannot open without custom_fields.
    """
    from ffcv.fields import RGBImageField
    from ffcv.fields.rgb_image import IMAGE_MODES

    field = RGBImageField(write_mode="jpg", max_resolution=None)

    def encode(self, destination, data, malloc):
        height, width = jpeg_size(data)
        destination["mode"] = IMAGE_MODES["jpg"]
        destination["height"], destination["width"] = height, width
        destination["data_ptr"], storage = malloc(len(data))
        storage[:] = np.frombuffer(data, dtype=np.uint8)

    field.encode = types.MethodType(encode, field)
    return field


class JpegFiles:
    """(JPEG bytes, label) per file: the indexed dataset FFCV's writer reads."""

    def __init__(self, files: list[Path], labels: list[int]):
        self.files, self.labels = files, labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[bytes, int]:
        return self.files[index].read_bytes(), self.labels[index]


def list_folders(folders: Path) -> tuple[list[Path], list[int]]:
    """Class folders → (files, class indices in sorted-folder order)."""
    classes = sorted(path.name for path in folders.iterdir() if path.is_dir())
    files, labels = [], []
    for index, name in enumerate(classes):
        for path in sorted((folders / name).iterdir()):
            files.append(path)
            labels.append(index)
    if not files:
        raise SystemExit(f"no images under {folders}: run `python -m tools.bench_loader` first")
    return files, labels


def write_beton(files: list[Path], labels: list[int], path: Path) -> None:
    from ffcv.fields import IntField
    from ffcv.writer import DatasetWriter

    temporary = path.with_suffix(".partial")
    writer = DatasetWriter(
        str(temporary), {"image": original_jpeg_field(), "label": IntField()}, num_workers=2
    )
    writer.from_indexed_dataset(JpegFiles(files, labels))
    temporary.replace(path)


def stored_bytes(path: Path, index: int) -> bytes:
    """The image bytes of sample `index` as the .beton holds them (FFCV's own reader)."""
    from ffcv.reader import Reader

    reader = Reader(str(path))
    pointer = int(reader.metadata[index]["f0"]["data_ptr"])
    table = reader.alloc_table
    size = int(table[table["ptr"] == pointer]["size"][0])
    with open(path, "rb") as handle:
        handle.seek(pointer)
        return handle.read(size)


def check_bytes(files: list[Path], path: Path) -> None:
    """Every file's bytes come back from the .beton unchanged, or SystemExit says which."""
    write_beton(files, list(range(len(files))), path)
    for index, source in enumerate(files):
        if stored_bytes(path, index) != source.read_bytes():
            raise SystemExit(f"{source}: the .beton holds other bytes (re-encoded?)")


def build_loader(path: Path, size: int, batch_size: int, workers: int):
    from ffcv.fields.decoders import IntDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, ToTensor, ToTorchImage

    return Loader(
        str(path),
        batch_size=batch_size,
        num_workers=workers,
        order=OrderOption.RANDOM,
        drop_last=True,
        pipelines={
            "image": [
                RandomResizedCropRGBImageDecoder((size, size)),
                RandomHorizontalFlip(),
                ToTensor(),
                ToTorchImage(),
            ],
            "label": [IntDecoder(), ToTensor()],
        },
    )


def time_loader(loader, seconds: float) -> tuple[float, float, int]:
    """(images/s, CPU ms per image, images) over `seconds` of whole batches, epochs chained."""
    counted = 0
    start, start_cpu = time.perf_counter(), process_tree_cpu_seconds()
    while True:
        for images, _ in loader:
            counted += images.shape[0]
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                cpu_ms = 1000 * (process_tree_cpu_seconds() - start_cpu) / counted
                return counted / elapsed, cpu_ms, counted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench_ffcv", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--folders", type=Path, help="class folders of JPEGs (bench_loader's)")
    parser.add_argument("--size", type=int, default=224, help="RandomResizedCrop size (224)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="FFCV's threads (2)")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--check-bytes", nargs="+", type=Path, help="only check that a .beton keeps these files"
    )
    args = parser.parse_args(argv)
    if args.check_bytes:
        beton = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-ffcv-check-{os.getpid()}.beton"
        try:
            check_bytes(args.check_bytes, beton)
        finally:
            beton.unlink(missing_ok=True)
        print(f"{len(args.check_bytes)} files stored byte for byte")
        return 0
    if args.folders is None:
        parser.error("--folders DIR is required (the class folders tools.bench_loader builds)")

    files, labels = list_folders(args.folders)
    beton = args.folders.parent / f"ffcv-{args.folders.name}-{len(files)}.beton"
    if not beton.is_file():
        write_beton(files, labels, beton)
    if stored_bytes(beton, 0) != files[0].read_bytes():
        raise SystemExit(f"{beton}: sample 0 is not {files[0]}'s bytes: delete it and rerun")
    loader = build_loader(beton, args.size, args.batch_size, args.workers)
    for _ in loader:  # warm-up epoch: numba compiles the pipeline
        pass
    gc.freeze()  # as tools.bench_loader's process and our trainer do before their first epoch
    rounds = [time_loader(loader, args.seconds) for _ in range(args.rounds)]
    rate = max(rate for rate, _, _ in rounds)
    cpu_ms = min(cpu_ms for _, cpu_ms, _ in rounds)
    result = {
        "backend": "ffcv",
        "ffcv": importlib.metadata.version("ffcv"),  # ffcv.__version__ still says 0.0.3rc1
        "size": args.size,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "images": len(files),
        "images_per_s": rate,
        "cpu_ms_per_image": cpu_ms,
        "rounds": [[rate, cpu_ms] for rate, cpu_ms, _ in rounds],
        "load_average": os.getloadavg()[0],
    }
    print(
        f"ffcv {args.size:4d} px: {rate:8.0f} images/s, {cpu_ms:5.2f} CPU ms/image "
        f"({args.workers} threads, batch {args.batch_size}, {len(files)} images)"
    )
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
