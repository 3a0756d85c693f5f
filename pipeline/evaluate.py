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
from pipeline.config import Config, replace
from pipeline.data import ClassList, build_loader, resolve_classes
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
from pipeline.precision import build_precision, configure_device

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
    result: EvalResult  # with flip-TTA: of the averaged logits
    examples: (
        tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None
    )  # rank-local images, labels, predictions
    single: EvalResult | None = None  # with flip-TTA: of the unflipped view alone

    def metrics(self, prefix: str = "val") -> dict[str, float]:
        """`prefix/top1`, ...; with flip-TTA also `prefix/single_top1`, ... (one view)."""
        metrics = self.result.as_metrics(prefix)
        if self.single is not None:
            for key, value in self.single.as_metrics(prefix).items():
                metrics[key.replace(f"{prefix}/", f"{prefix}/single_", 1)] = value
        return metrics


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    num_classes: int,
    dist: DistInfo,
    autocast: Callable[[], contextlib.AbstractContextManager],
    keep_examples: int = 32,
    interrupted: Callable[[], bool] | None = None,
    flip_tta: bool = False,
) -> EvalOutput:
    """Exact val metrics: this rank's batches with the unwrapped model (no DDP collectives, so
    ranks with different batch counts cannot hang), then one all-reduce of sums and counts.
    When `interrupted()` turns true the rank stops early (the caller discards the result).

    flip_tta: the logits of each image and of its mirror are averaged (FFCV's test-time flips);
    the single-view scores are kept beside them."""
    was_training = model.training
    model.eval()
    accumulator = EvalAccumulator(num_classes, dist.torch_device)
    single = EvalAccumulator(num_classes, dist.torch_device) if flip_tta else None
    picker = ExamplePicker(loader, keep_examples)  # a spread of val samples for the prediction grid
    loader.set_epoch(0)
    for images, labels in loader:  # images: [B, 3, H, W] uint8 on device
        if interrupted is not None and interrupted():
            break
        with autocast():
            logits = model(normalize(images))  # [B, C]
            if single is not None:
                single.update(logits, labels)
                mirrored = model(normalize(images.flip(3)))  # [B, 3, H, W]: W mirrored
                logits = (logits.float() + mirrored.float()) / 2
        accumulator.update(logits, labels)
        picker.add(images, labels, logits)
    result = accumulator.reduce(dist)
    single_result = single.reduce(dist) if single is not None else None
    model.train(was_training)
    return EvalOutput(result, picker.examples(), single_result)


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
        line = f"final: val/top1={metrics['val/top1']:.2f} val/top5={metrics['val/top5']:.2f}"
        if "val/ema_top1" in metrics:  # the weight EMA's, after the raw weights'
            line += f" val/ema_top1={metrics['val/ema_top1']:.2f}"
        print(line, flush=True)


def ema_named(metrics: dict[str, float]) -> dict[str, float]:
    """val/top1 -> val/ema_top1, ...: the weight EMA's scores beside the raw weights'."""
    return {key.replace("val/", "val/ema_", 1): value for key, value in metrics.items()}


def parse_eval_sizes(texts: list[str]) -> list[tuple[int, int]]:
    """`--eval-sizes 232/224 256/224`: (val_resize, val_crop) pairs; one line when malformed."""
    sizes = []
    for text in texts:
        resize, _, crop = text.partition("/")
        if not (resize.isdigit() and crop.isdigit()) or int(crop) > int(resize):
            raise ConfigError(
                f"--eval-sizes {text!r} is not RESIZE/CROP with CROP <= RESIZE (for example "
                "232/224: the short side to 232 px, then a 224 px center crop)"
            )
        sizes.append((int(resize), int(crop)))
    return sizes


def evaluate_checkpoint(
    cfg: Config, dist: DistInfo, resume: Path | None, sizes: list[tuple[int, int]] = ()
) -> int:
    """`python -m pipeline.train --evaluate`: val metrics of one set of weights, first found:
    --resume PATH, RUN_DIR/checkpoints/last.pt, model.init_from, at each (val_resize, val_crop)
    of `sizes` (default: the config's), one line per size; a checkpoint with a weight EMA is
    scored with both. eval.flip_tta applies.

    The run dir comes before init_from/finetune: a run started from those weights has trained
    past them, and model.finetune alone has a fresh random head. Writes RUN_DIR/eval.json and
    RUN_DIR/per_class_accuracy.csv (rank 0, of the first size) and prints the `final:` line."""
    device = dist.torch_device
    run_dir = Path(cfg.train.run_dir)
    configure_device(device)
    autocast = build_precision(cfg.train.precision, device).autocast
    sizes = list(sizes) or [(cfg.data.val_resize, cfg.data.val_crop)]
    sized = [replace(cfg, "data", val_resize=resize, val_crop=crop) for resize, crop in sizes]
    for each in sized:
        check_input_sizes(each)
    classes = resolve_classes(cfg)
    num_classes = resolve_num_classes(cfg.model, len(classes))
    latest = ckpt.find_latest(run_dir) if dist.is_main else None
    source = ckpt.agree_on_checkpoint(resume or latest, dist)
    check_weights_to_evaluate(cfg, run_dir, source)
    models = load_eval_models(cfg, num_classes, device, source)
    rows, first = evaluate_sizes(cfg, dist, models, classes, sized, autocast)
    result = first.result
    if dist.is_main:
        write_per_class_csv(
            result, list(classes.wnids), dict(classes.names), run_dir / "per_class_accuracy.csv"
        )
        report = {
            **{key: value for key, value in rows[0].items() if key.startswith("val/")},
            "val/num_samples": result.num_samples,
            "weights": str(source or cfg.model.init_from or cfg.model.finetune),
            "world_size": dist.world_size,
            "flip_tta": cfg.eval.flip_tta,
            "sizes": rows,
        }
        (run_dir / "eval.json").write_text(json.dumps(report, indent=1) + "\n")
    logger.info(
        "val/loss=%.4f val/macro_f1=%.2f on %d images",
        result.loss,
        result.macro_f1,
        result.num_samples,
    )
    print_final(rows[0], dist)
    return EXIT_OK


def check_weights_to_evaluate(cfg: Config, run_dir: Path, source: Path | None) -> None:
    """A ConfigError when there are no weights worth evaluating: no checkpoint, and no
    model.init_from (model.finetune alone has a random head)."""
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


def load_eval_models(
    cfg: Config, num_classes: int, device: torch.device, source: Path | None
) -> dict[str, nn.Module]:
    """{"raw": the weights} from `source` (a checkpoint, or bare weights), else model.init_from;
    plus {"ema": ...} when the checkpoint holds a weight EMA."""
    models = {"raw": create_model(cfg, num_classes, device, load_initial_weights=source is None)}
    if source is not None:
        data = ckpt.load_checkpoint(source)
        if isinstance(data, dict) and isinstance(data.get("model"), dict):
            models["raw"].load_state_dict(data["model"])
            if isinstance(data.get("ema"), dict):  # the weight EMA, scored beside the weights
                models["ema"] = create_model(cfg, num_classes, device, load_initial_weights=False)
                models["ema"].load_state_dict(data["ema"])
        else:
            load_weights(models["raw"], source, cfg.model.arch)
        logger.info("evaluating weights from %s", source)
    return models


def evaluate_sizes(
    cfg: Config,
    dist: DistInfo,
    models: dict[str, nn.Module],
    classes: ClassList,
    sized: list[Config],
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> tuple[list[dict[str, float]], EvalOutput]:
    """Every model at each size's config (one line per size on rank 0): the rows of metrics,
    and the first size's output of the raw weights."""
    num_classes = resolve_num_classes(cfg.model, len(classes))
    rows, first = [], None
    for each in sized:
        resize, crop = each.data.val_resize, each.data.val_crop
        loader = build_loader(each, "val", dist, classes)
        metrics: dict[str, float] = {}
        for name, model in models.items():
            output = evaluate(
                model, loader, num_classes, dist, autocast, flip_tta=cfg.eval.flip_tta
            )
            metrics.update(ema_named(output.metrics("val")) if name == "ema" else output.metrics())
            if first is None:
                first = output
        rows.append({"val_resize": resize, "val_crop": crop, **metrics})
        if dist.is_main:
            shown = " ".join(
                f"{key}={metrics[key]:.2f}"
                for key in ("val/top1", "val/top5", "val/ema_top1", "val/single_top1")
                if key in metrics
            )
            print(f"eval at {resize}/{crop}: {shown}", flush=True)
    return rows, first
