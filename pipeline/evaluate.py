"""Exact evaluation of a model over a val loader, the examples for the prediction grid, and the
`final:` line scripts read.

    output = evaluate(model, val_loader, num_classes, dist, autocast)
    output.result.top1, output.result.top5      # percent, over every val sample exactly once

Every rank evaluates its own val batches with the unwrapped model (no DDP collectives, so ranks
with different batch counts cannot hang), then one all-reduce of sums and counts gives metrics
that are identical whatever the number of ranks (pipeline/metrics.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from pipeline.data.transforms import normalize
from pipeline.distributed import DistInfo
from pipeline.metrics import EvalAccumulator, EvalResult


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
    """The one line scripts grep for: `final: val/top1=XX.XX val/top5=YY.YY` (percent), rank 0 only."""
    if dist.is_main:
        print(
            f"final: val/top1={metrics['val/top1']:.2f} val/top5={metrics['val/top5']:.2f}",
            flush=True,
        )
