"""Exact evaluation metrics: top-k, loss, macro-F1 and per-class accuracy from all-reduced sums.

Eval accumulates sums and counts only (a confusion matrix, a top-k hit count, a loss sum),
all-reduces them, then divides: the result is identical whatever the number of ranks or the
way the val set is split between them. Averaging per-rank means would weight ranks with a
short last batch wrongly.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import torch

from pipeline.distributed import DistInfo, all_reduce_sum


@dataclasses.dataclass(frozen=True)
class EvalResult:
    top1: float  # percent
    top5: float  # percent
    loss: float  # mean cross-entropy per sample
    macro_f1: float  # percent, over classes present in labels or predictions (as sklearn)
    num_samples: int
    per_class_correct: list[int]
    per_class_support: list[int]

    @property
    def per_class_accuracy(self) -> list[float]:
        return [
            100.0 * c / s if s else float("nan")
            for c, s in zip(self.per_class_correct, self.per_class_support)
        ]

    def as_metrics(self, prefix: str = "val") -> dict[str, float]:
        return {
            f"{prefix}/top1": self.top1,
            f"{prefix}/top5": self.top5,
            f"{prefix}/loss": self.loss,
            f"{prefix}/macro_f1": self.macro_f1,
        }


class EvalAccumulator:
    """Per-rank sums for exact eval: confusion matrix [C, C] (rows true), top-5 hits, loss sum."""

    def __init__(self, num_classes: int, device: torch.device | str):
        self.num_classes = num_classes
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
        self.sums = torch.zeros(
            3, dtype=torch.float64, device=device
        )  # loss sum, top-5 hits, samples
        self.samples = 0  # on the host: filled into sums[2] at reduce time

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one batch; everything stays on the device (no host sync per batch)."""
        logits = logits.float()  # [B, C]
        predictions = logits.argmax(dim=1)
        index = labels * self.num_classes + predictions  # [B]: row true, column predicted
        # index_add_ stays on the device; a CUDA bincount reads the max index back to the host
        # (two syncs per val batch)
        ones = torch.ones_like(index)
        self.confusion.view(-1).index_add_(0, index, ones)
        # float64: exact enough that any split of the val set over ranks agrees to ~1e-12
        loss_sum = torch.nn.functional.cross_entropy(logits.double(), labels, reduction="sum")
        top = logits.topk(min(5, self.num_classes), dim=1).indices  # [B, k]
        top5_hits = top.eq(labels.unsqueeze(1)).any(dim=1).sum()
        self.sums[0] += loss_sum
        self.sums[1] += top5_hits
        self.samples += labels.numel()

    def reduce(self, dist: DistInfo) -> EvalResult:
        """All-reduce the sums over ranks (every rank must call this) and compute the metrics."""
        self.sums[2] = self.samples
        all_reduce_sum(self.confusion, dist)
        all_reduce_sum(self.sums, dist)
        return compute_result(self.confusion.cpu(), self.sums.cpu())


def compute_result(confusion: torch.Tensor, sums: torch.Tensor) -> EvalResult:
    confusion = confusion.to(torch.int64)
    loss_sum, top5_hits, count = (float(v) for v in sums)
    true_positive = confusion.diag()
    support = confusion.sum(dim=1)
    predicted = confusion.sum(dim=0)
    present = (support + predicted) > 0
    f1 = (2 * true_positive).double() / (support + predicted).clamp(min=1).double()
    macro_f1 = 100.0 * float(f1[present].mean()) if bool(present.any()) else 0.0
    total = max(count, 1.0)
    return EvalResult(
        top1=100.0 * float(true_positive.sum()) / total,
        top5=100.0 * top5_hits / total,
        loss=loss_sum / total,
        macro_f1=macro_f1,
        num_samples=int(count),
        per_class_correct=true_positive.tolist(),
        per_class_support=support.tolist(),
    )


def write_per_class_csv(
    result: EvalResult, classes: list[str], class_names: dict[str, str], path: str | Path
) -> Path:
    """class_index, wnid, name, support, correct, accuracy (percent) for every class."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(".csv.tmp")
    with open(temp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class_index", "wnid", "name", "support", "correct", "accuracy"])
        for index, (correct, support) in enumerate(
            zip(result.per_class_correct, result.per_class_support)
        ):
            wnid = classes[index] if index < len(classes) else str(index)
            accuracy = f"{100.0 * correct / support:.2f}" if support else ""
            writer.writerow([index, wnid, class_names.get(wnid, ""), support, correct, accuracy])
    temp.replace(path)
    return path
