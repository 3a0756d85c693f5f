"""Experiment tracking on rank 0: W&B (real client), a JSONL metrics file and PNG plots.

    python -m pipeline.tracking plots RUN_DIR     # curves (and prediction grid) from a run dir
    python -m pipeline.tracking history RUN_DIR   # print the logged rows of the W&B offline run

`build_tracker(cfg, dist, run_dir, run_id)` returns a `Tracker` on global rank 0 and a
`NullTracker` elsewhere, so the loop calls `tracker.log(...)` unconditionally.

W&B mode: log.wandb=auto is online when WANDB_API_KEY is set and offline otherwise (runs land
in RUN_DIR/wandb/; `wandb sync RUN_DIR/wandb/offline-run-*` uploads them later). The run id is
stored in the checkpoint and passed back with resume="allow", so a resumed job continues the
same W&B run. The API key is read by the wandb client from the environment only: it is never
put into the config, the logs, the run dir or a checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Config, config_to_dict
from pipeline.distributed import DistInfo

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


class NullTracker:
    """What non-main ranks (and log.wandb=disabled plus no run dir) get: every call does nothing."""

    run_id: str = ""

    def log(self, metrics: dict[str, float], step: int, epoch: float) -> None:
        pass

    def save_batch_grid(self, images, labels, class_names: list[str]) -> None:
        pass

    def save_prediction_grid(self, images, labels, predictions, class_names: list[str]) -> None:
        pass

    def finish(self, summary: dict[str, float] | None = None, plots: bool = True) -> None:
        pass


class Tracker(NullTracker):
    """Rank 0: appends to RUN_DIR/metrics.jsonl and logs to W&B (unless disabled)."""

    def __init__(self, cfg: Config, run_dir: Path, run_id: str | None):
        self.run_dir = run_dir
        self.metrics_path = run_dir / METRICS_FILE
        self.plots_dir = run_dir / "plots"
        self.wandb_run = None
        self.run_id = run_id or ""
        mode = resolve_wandb_mode(cfg.log.wandb)
        if mode != "disabled":
            self.wandb_run = _start_wandb(cfg, run_dir, run_id, mode)
            self.run_id = self.wandb_run.id

    def log(self, metrics: dict[str, float], step: int, epoch: float) -> None:
        row = {
            "step": int(step),
            "epoch": round(float(epoch), 4),
            **{k: float(v) for k, v in metrics.items()},
        }
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log({**metrics, "epoch": row["epoch"]}, step=int(step))

    def save_batch_grid(self, images, labels, class_names: list[str]) -> None:
        """The sanity grid of an augmented train batch (pipeline.data.grid.save_batch_grid)."""
        from pipeline.data.grid import save_batch_grid

        path = save_batch_grid(images, labels, class_names, self.plots_dir / "train_batch.png")
        log.info("wrote sanity grid of an augmented train batch to %s", path)

    def save_prediction_grid(self, images, labels, predictions, class_names: list[str]) -> None:
        path = save_prediction_grid(
            images, labels, predictions, class_names, self.plots_dir / "predictions.png"
        )
        log.info("wrote prediction grid to %s", path)

    def finish(self, summary: dict[str, float] | None = None, plots: bool = True) -> None:
        if self.wandb_run is not None:
            if summary:
                for key, value in summary.items():
                    self.wandb_run.summary[key] = value
            if plots:
                for image in sorted(self.plots_dir.glob("*.png")):
                    self.wandb_run.log({f"plots/{image.stem}": _wandb_image(image)})
            self.wandb_run.finish()
            self.wandb_run = None
        if plots:
            for path in plot_curves(self.run_dir):
                log.info("wrote %s", path)


def _wandb_image(path: Path):
    import wandb

    return wandb.Image(str(path))


def resolve_wandb_mode(mode: str) -> str:
    """auto → online when WANDB_API_KEY is set, else offline; WANDB_MODE=disabled/offline in the env wins over auto."""
    if mode != "auto":
        return mode
    env_mode = os.environ.get("WANDB_MODE", "")
    if env_mode in ("offline", "disabled", "online"):
        return env_mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def _start_wandb(cfg: Config, run_dir: Path, run_id: str | None, mode: str):
    import wandb

    run_dir.mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=cfg.log.project,
        entity=cfg.log.entity or None,
        name=cfg.log.run_name or run_dir.resolve().name,
        id=run_id or None,  # None: wandb generates one, which the checkpoint then keeps
        resume="allow",
        dir=str(run_dir),
        mode=mode,
        config=config_to_dict(cfg),
        settings=wandb.Settings(console="off", x_disable_stats=False),
    )


def build_tracker(cfg: Config, dist: DistInfo, run_dir: Path, run_id: str | None) -> NullTracker:
    """A Tracker on global rank 0, a NullTracker on every other rank."""
    if not dist.is_main:
        return NullTracker()
    return Tracker(cfg, run_dir, run_id)


# ----------------------------------------------------------------------------- reading back


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of RUN_DIR/metrics.jsonl; a resumed run may repeat steps, the last row per step wins per key."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


_WANDB_HEADER = 7  # ":W&B" + magic 0xBEE1 + version byte
_BLOCK = 32768  # LevelDB log block size used by the .wandb transaction log


def read_wandb_records(path: str | Path):
    """Yield the protobuf Records of a .wandb file (LevelDB log format: 32 KiB blocks, 7-byte record headers)."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    offset = _WANDB_HEADER
    pending = b""
    while offset + 7 <= len(data):
        block_left = _BLOCK - offset % _BLOCK
        if block_left < 7:  # trailer padding
            offset += block_left
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[offset : offset + 7])
        payload = data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind == 0 and length == 0:
            offset += _BLOCK - offset % _BLOCK if offset % _BLOCK else 0
            continue
        if kind == 1:  # FULL
            pending = payload
        elif kind == 2:  # FIRST
            pending = payload
            continue
        elif kind == 3:  # MIDDLE
            pending += payload
            continue
        elif kind == 4:  # LAST
            pending += payload
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        pending = b""
        yield record


def read_wandb_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The history rows (key → value) of every W&B offline run under RUN_DIR/wandb, in log order."""
    rows = []
    for path in sorted(Path(run_dir).glob("wandb/*run-*/run-*.wandb")):
        for record in read_wandb_records(path):
            if record.WhichOneof("record_type") != "history":
                continue
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                try:
                    row[key] = json.loads(item.value_json)
                except (ValueError, TypeError):
                    row[key] = item.value_json
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- plots


def plot_curves(run_dir: str | Path) -> list[Path]:
    """loss.png and accuracy.png from metrics.jsonl (train per log window, val per eval)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    if not rows:
        return []
    plots_dir = run_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)

    def series(key: str) -> tuple[list[float], list[float]]:
        by_step: dict[int, float] = {}
        epochs: dict[int, float] = {}
        for row in rows:
            value = row.get(key)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                by_step[row["step"]] = value  # a resumed run re-logs some steps: keep the latest
                epochs[row["step"]] = row.get("epoch", 0.0)
        steps = sorted(by_step)
        return [epochs[s] for s in steps], [by_step[s] for s in steps]

    written = []
    for name, keys, ylabel in (
        ("loss", ("train/loss", "val/loss"), "cross-entropy"),
        ("accuracy", ("train/top1", "val/top1", "val/top5"), "accuracy (%)"),
    ):
        figure, axis = plt.subplots(figsize=(7, 4.5))
        for key in keys:
            x, y = series(key)
            if x:
                axis.plot(
                    x, y, marker="o" if key.startswith("val") else None, markersize=3, label=key
                )
        axis.set_xlabel("epoch")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        axis.legend()
        figure.tight_layout()
        path = plots_dir / f"{name}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


class ExamplePicker:
    """Up to `keep` val samples for the prediction grid, spread evenly over this rank's batches.

    Val class folders are read in class order, so the first 32 images would all be one class;
    every (planned samples // keep)-th sample is kept instead (plain first ones when the loader
    has no length). `add` takes each batch; `examples()` is (images, labels, predictions) on the
    CPU, or None when this rank read no val sample."""

    def __init__(self, loader, keep: int = 32):
        self.keep = keep
        try:
            planned = len(loader) * loader.batch_size  # this rank's val samples, at most
        except (TypeError, AttributeError):
            planned = 0
        self.step = max(1, planned // keep) if keep else 1
        self.position = 0  # of the next batch's first sample
        self.kept = 0
        self.parts: list[tuple] = []

    def add(self, images, labels, logits) -> None:
        import torch

        count = int(labels.shape[0])
        first = -self.position % self.step
        chosen = torch.arange(first, max(first, count), self.step)[: max(0, self.keep - self.kept)]
        self.position += count
        if len(chosen):
            chosen_on_device = chosen.to(labels.device)
            self.parts.append(
                (
                    images[chosen_on_device].cpu(),
                    labels[chosen_on_device].cpu(),
                    logits[chosen_on_device].argmax(1).cpu(),
                )
            )
            self.kept += len(chosen)

    def examples(self):
        import torch

        if not self.parts:
            return None
        return tuple(torch.cat(column) for column in zip(*self.parts))


def save_prediction_grid(
    images, labels, predictions, class_names: list[str], path: Path, max_images: int = 32
) -> Path:
    """Val images captioned 'ok|WRONG: predicted / true' class names."""
    from preprocess.grid import render_grid

    count = min(len(images), max_images)
    pictures: list[np.ndarray] = []
    captions: list[str] = []
    for index in range(count):
        image = images[index]
        array = (
            image.detach().cpu().contiguous().permute(1, 2, 0).numpy()
            if hasattr(image, "detach")
            else np.asarray(image)
        )
        pictures.append(np.ascontiguousarray(array.astype(np.uint8)))
        true_index, predicted_index = int(labels[index]), int(predictions[index])
        mark = "ok" if true_index == predicted_index else "WRONG"
        captions.append(
            f"{mark}: {_short(class_names, predicted_index)} / {_short(class_names, true_index)}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    return render_grid(pictures, captions, path, columns=8)


def _short(class_names: Sequence[str], index: int) -> str:
    name = class_names[index] if 0 <= index < len(class_names) else str(index)
    return name.split(",")[0][:18]


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m pipeline.tracking", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    plots = commands.add_parser(
        "plots",
        help="write RUN_DIR/plots/*.png from metrics.jsonl (+ prediction grid from the best checkpoint)",
    )
    plots.add_argument("run_dir", type=Path)
    plots.add_argument(
        "--no-predictions",
        action="store_true",
        help="curves only; skip loading the model and val data",
    )
    history = commands.add_parser(
        "history", help="print the history rows of the W&B offline runs in RUN_DIR/wandb"
    )
    history.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    if not args.run_dir.is_dir():
        print(f"error: run dir {args.run_dir} does not exist", file=sys.stderr)
        return 2
    if args.command == "history":
        for row in read_wandb_history(args.run_dir):
            print(json.dumps(row))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    written = plot_curves(args.run_dir)
    if not written:
        print(
            f"error: {args.run_dir / METRICS_FILE} is missing or empty: is this a run dir?",
            file=sys.stderr,
        )
        return 2
    for path in written:
        print(path)
    if not args.no_predictions:
        from pipeline.train import render_predictions_from_run

        path = render_predictions_from_run(args.run_dir)
        if path is not None:
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
