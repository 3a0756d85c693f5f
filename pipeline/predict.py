"""Classify images with a run's checkpoint: the top-5 classes by name, or top-1/top-5 over a
class-folder tree.

    python -m pipeline.predict --checkpoint runs/alexnet/checkpoints/best.pt photo.jpg photos/
    python -m pipeline.predict --checkpoint best.pt photos/ --output predictions.csv   # or .json
    python -m pipeline.predict --checkpoint best.pt --evaluate /data/imagenet/folders/val

Each image goes through the run's own val transform (short side to data.val_resize, center crop
data.val_crop: pipeline/data/transforms.py's decode_val, the one every loader uses) and the
run's class names (kept in the checkpoint). `--weights ema` scores the weight EMA, `--flip-tta`
averages each image's logits with its mirror's (as eval.flip_tta), `--device` and `--precision`
take train.device's and train.precision's values.

`--evaluate DIR` reads DIR/<wnid>/<image> and prints top-1 and top-5 computed as the trainer's
exact eval computes them (pipeline/metrics.py's EvalAccumulator over every image once), so on
the same images they equal the trainer's `val/top1` and `val/top5`.

An image that cannot be read is one line on stderr naming the file; the others still run, and
the exit status is 1. Exit 2: a bad checkpoint, path or option (one line).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from core.fileio import atomic_write_text
from core.logs import configure_logging
from pipeline.data.files import IMAGE_EXTENSIONS, list_class_folders
from pipeline.data.transforms import decode_val, normalize
from pipeline.distributed import CudaProbe, DistInfo, select_device
from pipeline.errors import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE, UserError, first_line
from pipeline.metrics import EvalAccumulator
from pipeline.precision import build_precision
from pipeline.trained import TrainedModel, load_trained_model

logger = logging.getLogger(__name__)

TOP_K = 5
CPU = torch.device("cpu")


@dataclasses.dataclass(frozen=True)
class Prediction:
    path: str
    top: list[tuple[int, float]]  # (class index, probability), most probable first
    label: int | None = None  # with --evaluate: the folder's class index


@dataclasses.dataclass
class PredictResult:
    predictions: list[Prediction]
    unreadable: list[tuple[str, str]]  # (path, reason)
    metrics: dict[str, float] | None = None  # with --evaluate: val/top1, val/top5 (percent)


def list_images(inputs: list[Path]) -> list[str]:
    """Every image file named or under a named folder (recursively, sorted); a missing path is a
    UserError."""
    found: list[str] = []
    for item in inputs:
        if item.is_dir():
            found += sorted(
                str(path)
                for path in item.rglob("*")
                if path.is_file() and path.name.lower().endswith(IMAGE_EXTENSIONS)
            )
        elif item.is_file():
            found.append(str(item))
        else:
            raise UserError(f"{item} does not exist: pass image files or folders of images")
    if not found:
        raise UserError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {', '.join(map(str, inputs))}"
        )
    return found


def decoded_batches(
    trained: TrainedModel,
    paths: list[str],
    labels: list[int] | None,
    batch_size: int,
    unreadable: list[tuple[str, str]],
) -> Iterator[tuple[torch.Tensor, list[str], list[int]]]:
    """(uint8 [B, 3, H, W], their paths, their labels: -1 without) through the run's val
    transform. An image that does not decode is one logged line naming it, and goes to
    `unreadable` as (path, reason) instead."""
    augmentation = trained.augmentation()
    images: list[np.ndarray] = []
    kept: list[str] = []
    kept_labels: list[int] = []
    for index, path in enumerate(paths):
        try:
            images.append(decode_val(path, augmentation))  # [H, W, 3] uint8
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            if isinstance(err, UnidentifiedImageError):  # its text names a BytesIO, not the file
                reason = "not an image format PIL can decode"
            else:
                reason = f"{type(err).__name__}: {first_line(err)}"
            logger.error("%s: cannot read this image (%s): skipped", path, reason)
            unreadable.append((path, reason))
            continue
        kept.append(path)
        kept_labels.append(labels[index] if labels is not None else -1)
        if len(images) == batch_size:
            yield torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2), kept, kept_labels
            images, kept, kept_labels = [], [], []
    if images:
        yield torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2), kept, kept_labels


def predict(
    trained: TrainedModel,
    paths: list[str],
    *,
    labels: list[int] | None = None,
    device: torch.device = CPU,
    precision: str = "fp32",
    flip_tta: bool = False,
    batch_size: int = 64,
) -> PredictResult:
    """Top-5 of every image; with `labels`, also top-1/top-5 as the trainer's exact eval."""
    channels_last = trained.cfg.train.channels_last  # the layout the trainer evaluated in
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = trained.model.to(device, memory_format=memory_format)
    autocast = build_precision(precision, device).autocast
    accumulator = EvalAccumulator(trained.num_classes, device) if labels is not None else None
    result = PredictResult([], [])
    with torch.no_grad():
        batches = decoded_batches(trained, paths, labels, batch_size, result.unreadable)
        for images, batch_paths, batch_labels in batches:
            images = images.to(device).contiguous(memory_format=memory_format)  # uint8 [B,3,H,W]
            with autocast():
                logits = model(normalize(images))  # [B, C]
                if flip_tta:  # as pipeline.evaluate: the mean of the two views' logits
                    mirrored = model(normalize(images.flip(3)))
                    logits = (logits.float() + mirrored.float()) / 2
            probabilities = logits.float().softmax(dim=1)
            top = probabilities.topk(min(TOP_K, trained.num_classes), dim=1)
            for row, path in enumerate(batch_paths):
                pairs = list(zip(top.indices[row].tolist(), top.values[row].tolist()))
                label = batch_labels[row] if labels is not None else None
                result.predictions.append(Prediction(path, pairs, label))
            if accumulator is not None:
                accumulator.update(logits, torch.tensor(batch_labels, device=device))
    if accumulator is not None and result.predictions:
        outcome = accumulator.reduce(DistInfo(device=str(device)))
        result.metrics = {
            "val/top1": outcome.top1,
            "val/top5": outcome.top5,
            "val/num_samples": outcome.num_samples,
        }
    return result


def print_predictions(trained: TrainedModel, result: PredictResult) -> None:
    """Each image's path (and true class with --evaluate), then its top-5, one per line."""
    out = sys.stdout  # looked up now: a caller may have swapped it since import
    for item in result.predictions:
        truth = f"  (true: {trained.class_names[item.label]})" if item.label is not None else ""
        print(f"{item.path}{truth}", file=out)
        for rank, (index, probability) in enumerate(item.top, start=1):
            wnid = f" ({trained.wnids[index]})" if index < len(trained.wnids) else ""
            print(
                f"  {rank}. {probability * 100:6.2f}%  {trained.class_names[index]}{wnid}",
                file=out,
            )


def write_output(trained: TrainedModel, result: PredictResult, path: Path, settings: dict) -> None:
    """--output: CSV (one row per image, the top-5 as columns) or JSON (everything), by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def named(index: int) -> dict:
        return {
            "index": index,
            "wnid": trained.wnids[index] if index < len(trained.wnids) else "",
            "name": trained.class_names[index],
        }

    if path.suffix.lower() == ".json":
        document = {
            "checkpoint": str(trained.source),
            **settings,
            "metrics": result.metrics,
            "predictions": [
                {
                    "path": item.path,
                    **({"label": named(item.label)} if item.label is not None else {}),
                    "top": [{**named(i), "probability": p} for i, p in item.top],
                }
                for item in result.predictions
            ],
            "unreadable": [{"path": p, "reason": r} for p, r in result.unreadable],
        }
        atomic_write_text(path, json.dumps(document, indent=1) + "\n")
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    columns = ["path", "label_wnid"]
    for rank in range(1, TOP_K + 1):
        columns += [f"top{rank}_index", f"top{rank}_wnid", f"top{rank}_name", f"top{rank}_prob"]
    writer.writerow(columns)
    for item in result.predictions:
        row = [item.path, named(item.label)["wnid"] if item.label is not None else ""]
        for index, probability in item.top:
            entry = named(index)
            row += [index, entry["wnid"], entry["name"], f"{probability:.6f}"]
        writer.writerow(row)
    atomic_write_text(path, buffer.getvalue())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="RUN_DIR/checkpoints/X.pt")
    parser.add_argument("inputs", nargs="*", type=Path, metavar="IMAGE_OR_DIR")
    parser.add_argument(
        "--evaluate",
        type=Path,
        metavar="DIR",
        help="a class-folder tree (DIR/<wnid>/<image>): print top-1 and top-5",
    )
    parser.add_argument(
        "--weights",
        choices=["auto", "raw", "ema"],
        default="auto",
        help="raw or weight-EMA weights; auto: those eval.best_metric followed (default)",
    )
    parser.add_argument("--flip-tta", action="store_true", help="average with the mirror image")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], default="fp32")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward")
    parser.add_argument("--output", type=Path, help="write the predictions: FILE.csv or FILE.json")
    parser.add_argument("--quiet", action="store_true", help="no per-image lines on stdout")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.predict`; returns the exit code."""
    args = parse_args(argv)
    configure_logging(logging.INFO, "%(levelname)s %(message)s", None)
    try:
        if bool(args.inputs) == bool(args.evaluate):
            raise UserError("pass images or folders to classify, or --evaluate DIR (not both)")
        if args.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
        if args.output is not None and args.output.suffix.lower() not in (".csv", ".json"):
            raise UserError(f"--output {args.output}: name a .csv or .json file")
        device = torch.device(select_device(args.device, 0, 1, CudaProbe.read()))
        trained = load_trained_model(args.checkpoint, args.weights)
        labels = None
        if args.evaluate:
            _, paths, label_array = list_class_folders(args.evaluate, list(trained.wnids))
            labels = label_array.tolist()
        else:
            paths = list_images(args.inputs)
        result = predict(
            trained,
            paths,
            labels=labels,
            device=device,
            precision=args.precision,
            flip_tta=args.flip_tta,
            batch_size=args.batch_size,
        )
    except UserError as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    if not args.quiet:
        print_predictions(trained, result)
    if result.metrics is not None:
        print(
            f"evaluate: val/top1={result.metrics['val/top1']:.2f} "
            f"val/top5={result.metrics['val/top5']:.2f} on "
            f"{int(result.metrics['val/num_samples'])} images ({trained.weights} weights"
            f"{', flip-TTA' if args.flip_tta else ''})"
        )
    if args.output is not None:
        settings = {"weights": trained.weights, "flip_tta": args.flip_tta}
        write_output(trained, result, args.output, settings)
        print(f"wrote {args.output}")
    if result.unreadable:
        print(
            f"{len(result.unreadable)} of {len(paths)} images could not be read (listed above)",
            file=sys.stderr,
        )
        return EXIT_CHECK_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
