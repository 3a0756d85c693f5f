"""Exact evaluation of a model over a val loader, the examples for the prediction grid, the
`final:` line scripts read, and the `--evaluate` command.

    output = evaluate(model, val_loader, num_classes, dist, autocast)
    output.result.top1, output.result.top5      # percent, over every val sample exactly once

Every rank evaluates its own val batches with the unwrapped model (no DDP collectives, so ranks
with different batch counts cannot hang), then one all-reduce of sums and counts gives metrics
that are identical whatever the number of ranks (pipeline/metrics.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from pipeline import checkpoint as ckpt
from pipeline.config import Config
from pipeline.data import build_loader, resolve_classes
from pipeline.data.transforms import normalize
from pipeline.distributed import DistInfo
from pipeline.errors import EXIT_OK, ConfigError
from pipeline.metrics import EvalAccumulator, EvalResult, write_per_class_csv
from pipeline.models import (
    check_input_sizes,
    create_model,
    load_weights,
    resolve_num_classes,
)
from pipeline.precision import build_autocast, configure_device, resolve_precision

logger = logging.getLogger(__name__)


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
        if not self.parts:
            return None
        return tuple(torch.cat(column) for column in zip(*self.parts))


@dataclasses.dataclass
class EvalOutput:
    result: EvalResult
    examples: (
        tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None
    )  # rank-local images, labels, predictions


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    num_classes: int,
    dist: DistInfo,
    autocast: Callable[[], contextlib.AbstractContextManager],
    keep_examples: int = 32,
    interrupted: Callable[[], bool] | None = None,
) -> EvalOutput:
    """Exact val metrics: this rank's batches with the unwrapped model (no DDP collectives, so
    ranks with different batch counts cannot hang), then one all-reduce of sums and counts.
    When `interrupted()` turns true the rank stops early (the caller discards the result)."""
    was_training = model.training
    model.eval()
    accumulator = EvalAccumulator(num_classes, dist.torch_device)
    picker = ExamplePicker(loader, keep_examples)  # a spread of val samples for the prediction grid
    loader.set_epoch(0)
    for images, labels in loader:  # images: [B, 3, H, W] uint8 on device
        if interrupted is not None and interrupted():
            break
        with autocast():
            logits = model(normalize(images))
        accumulator.update(logits, labels)
        picker.add(images, labels, logits)
    result = accumulator.reduce(dist)
    model.train(was_training)
    return EvalOutput(result, picker.examples())


class FirstBatches:
    """A loader view that yields only the first `count` batches (for a quick prediction grid)."""

    def __init__(self, loader, count: int):
        self.loader, self.count = loader, count

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.loader.set_epoch(epoch, start_batch)

    def __iter__(self):
        for index, batch in enumerate(self.loader):
            if index >= self.count:
                break
            yield batch


def print_final(metrics: dict[str, float], dist: DistInfo) -> None:
    """The one line scripts grep for: `final: val/top1=XX.XX val/top5=YY.YY` (percent), rank 0
    only."""
    if dist.is_main:
        print(
            f"final: val/top1={metrics['val/top1']:.2f} val/top5={metrics['val/top5']:.2f}",
            flush=True,
        )


def evaluate_checkpoint(cfg: Config, dist: DistInfo, resume: Path | None) -> int:
    """`python -m pipeline.train --evaluate`: val metrics of one set of weights, first found:
    --resume PATH, RUN_DIR/checkpoints/last.pt, model.init_from.

    The run dir comes before init_from/finetune: a run started from those weights has trained
    past them, and model.finetune alone has a fresh random head. Writes RUN_DIR/eval.json and
    RUN_DIR/per_class_accuracy.csv (rank 0) and prints the `final:` line."""
    device = dist.torch_device
    run_dir = Path(cfg.train.run_dir)
    configure_device(device)
    autocast = build_autocast(resolve_precision(cfg.train.precision, device), device)
    check_input_sizes(cfg)
    classes = resolve_classes(cfg)
    val_loader = build_loader(cfg, "val", dist, classes)
    num_classes = resolve_num_classes(cfg.model, len(classes))
    latest = ckpt.find_latest(run_dir) if dist.is_main else None
    source = ckpt.agree_on_checkpoint(resume or latest, dist)
    if source is None and cfg.model.finetune:
        raise ConfigError(
            f"nothing to evaluate: model.finetune={cfg.model.finetune} alone gets a new random "
            f"head and {run_dir / 'checkpoints'} has no last.pt; evaluate the fine-tune run's "
            "checkpoint (its train.run_dir or --resume PATH)"
        )
    if source is None and not cfg.model.init_from:
        raise ConfigError(
            f"nothing to evaluate: no checkpoint in {run_dir / 'checkpoints'}; "
            "pass --resume PATH or --init-from WEIGHTS"
        )
    model = create_model(cfg, num_classes, device, load_initial_weights=source is None)
    if source is not None:
        data = ckpt.load_checkpoint(source)
        if isinstance(data, dict) and isinstance(data.get("model"), dict):
            model.load_state_dict(data["model"])
        else:
            load_weights(model, source)
        logger.info("evaluating weights from %s", source)
    output = evaluate(model, val_loader, num_classes, dist, autocast)
    result = output.result
    if dist.is_main:
        write_per_class_csv(
            result, list(classes.wnids), dict(classes.names), run_dir / "per_class_accuracy.csv"
        )
        report = {
            **result.as_metrics(),
            "val/num_samples": result.num_samples,
            "weights": str(source or cfg.model.init_from or cfg.model.finetune),
            "world_size": dist.world_size,
        }
        (run_dir / "eval.json").write_text(json.dumps(report, indent=1) + "\n")
    logger.info(
        "val/loss=%.4f val/macro_f1=%.2f on %d images",
        result.loss,
        result.macro_f1,
        result.num_samples,
    )
    print_final(result.as_metrics(), dist)
    return EXIT_OK
