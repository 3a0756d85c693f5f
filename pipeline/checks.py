"""Sanity checks before a long run (`python -m pipeline.train --config FILE --check`).

1. Initial loss: a freshly initialized classifier should be unsure of every class, so its
   cross-entropy on a real batch is close to ln(num_classes) (6.91 for ImageNet's 1000). A much
   larger value means badly scaled logits (init or normalization); a much smaller one means the
   labels leak or the task is trivial. Past train.check_loss_tolerance (a fraction) it warns.
2. Overfit one batch: with dropout and weight decay off, the model must reach 100% train
   accuracy on one fixed batch within train.check_overfit_steps steps. If it cannot, the
   labels, the loss or the backward pass is broken, whatever the learning rate. The check uses
   Adam at lr 1e-3 (a forgiving choice) so it tests the model and data path, not the recipe.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math

import torch
from torchvision.ops import StochasticDepth

from pipeline.config import Config, replace
from pipeline.data import build_loader, resolve_classes
from pipeline.data.transforms import normalize
from pipeline.distributed import DistInfo, all_reduce_sum
from pipeline.errors import EXIT_CHECK_FAILED, EXIT_OK
from pipeline.models import build_model, check_input_sizes, resolve_num_classes
from pipeline.precision import Precision, build_precision, resolve_precision
from pipeline.train.step import build_model_views, build_optimizer_step

logger = logging.getLogger(__name__)

OVERFIT_LR = 1e-3


@dataclasses.dataclass(frozen=True)
class CheckReport:
    num_classes: int
    batch_size: int
    initial_loss: float
    expected_loss: float  # ln(num_classes)
    loss_tolerance: float  # allowed |initial - expected| / expected
    overfit_steps: int  # steps taken (stops early at 100%)
    overfit_accuracy: float  # percent, train mode, on the fixed batch
    overfit_limit: int
    loss_scale: float | None = None  # fp16: the GradScaler's final scale (None without one)

    @property
    def loss_ok(self) -> bool:
        return (
            abs(self.initial_loss - self.expected_loss) <= self.loss_tolerance * self.expected_loss
        )

    @property
    def overfit_ok(self) -> bool:
        return self.overfit_accuracy >= 100.0

    def lines(self) -> list[str]:
        loss_verdict = (
            "ok"
            if self.loss_ok
            else f"WARNING: more than {self.loss_tolerance:.0%} away from ln(C)"
        )
        overfit_verdict = (
            f"ok: 100% in {self.overfit_steps} steps"
            if self.overfit_ok
            else (
                f"FAILED: {self.overfit_accuracy:.1f}% after {self.overfit_steps} steps "
                f"(limit {self.overfit_limit})"
            )
        )
        scaled = (
            f" (fp16 with GradScaler, loss scale {self.loss_scale:g})"
            if self.loss_scale is not None
            else ""
        )
        return [
            (
                f"check initial loss: {self.initial_loss:.4f} vs ln({self.num_classes}) = "
                f"{self.expected_loss:.4f}: {loss_verdict}"
            ),
            f"check overfit one batch of {self.batch_size}: {overfit_verdict}{scaled}",
        ]


def silence_dropout(model: torch.nn.Module) -> None:
    """Dropout and stochastic depth off everywhere (whatever the architecture calls them): the
    overfit check tests the model and data path, not the regularization."""
    for module in model.modules():
        if isinstance(module, (torch.nn.Dropout, StochasticDepth)):
            module.p = 0.0


def run_checks(
    cfg: Config, dist: DistInfo, num_classes: int, images: torch.Tensor, labels: torch.Tensor
) -> CheckReport:
    """Both checks on one train batch (uint8 images [N,3,H,W] and labels [N] on the target device)
    in train.precision; under fp16 the overfit steps go through the GradScaler, as training's do
    (unscaled fp16 gradients underflow, and the check would fail for a reason training does not
    have)."""
    precision = build_precision(cfg.train.precision, images.device)
    initial_loss = measure_initial_loss(cfg, num_classes, images, labels, precision)
    steps, accuracy, loss_scale = overfit_one_batch(
        cfg, dist, num_classes, (images, labels), precision
    )
    return CheckReport(
        num_classes=num_classes,
        batch_size=int(labels.numel()),
        initial_loss=initial_loss,
        expected_loss=math.log(num_classes),
        loss_tolerance=cfg.train.check_loss_tolerance,
        overfit_steps=steps,
        overfit_accuracy=accuracy,
        overfit_limit=cfg.train.check_overfit_steps,
        loss_scale=loss_scale,
    )


def fresh_model(cfg: Config, num_classes: int, device: torch.device) -> torch.nn.Module:
    """The configured model at its seeded initialization (no init_from), on `device`."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, num_classes, image_size=cfg.data.train_crop)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    return model.to(device, memory_format=memory_format)


def measure_initial_loss(
    cfg: Config, num_classes: int, images: torch.Tensor, labels: torch.Tensor, precision: Precision
) -> float:
    """Cross-entropy of the freshly initialized model in eval mode (dropout off: the loss of the
    function at init, not of a random sub-network)."""
    model = fresh_model(cfg, num_classes, images.device)
    model.eval()
    with torch.no_grad(), precision.autocast():
        logits = model(normalize(images))
        return float(torch.nn.functional.cross_entropy(logits.float(), labels))


def overfit_one_batch(
    cfg: Config, dist: DistInfo, num_classes: int, batch: tuple, precision: Precision
) -> tuple[int, float, float | None]:
    """(optimizer steps taken, train accuracy %, the GradScaler's scale or None without one):
    training's own step (the one factory) on one fixed batch, until 100% or the step limit.

    The step is training's with the check's optimizer (Adam at OVERFIT_LR, no weight decay and
    no schedule), plain cross-entropy, no accumulation, clipping, compile or batch augmentation.
    The accuracy of step k is measured on its forward, before its update, so step k's numbers
    are those of the model after k updates."""
    check_cfg = replace(
        replace(cfg, "optim", grad_accum_steps=1, clip_grad_norm=0.0, label_smoothing=0.0),
        "train",
        compile=False,
    )
    model = fresh_model(cfg, num_classes, batch[0].device)
    silence_dropout(model)
    model.train()
    take_step = build_optimizer_step(
        check_cfg,
        dist,
        build_model_views(check_cfg, dist, model, ddp=False),
        precision,
        optimizer=torch.optim.Adam(model.parameters(), lr=OVERFIT_LR, weight_decay=0.0),
    )
    scaler, meter = precision.scaler, take_step.meter
    batches = itertools.repeat(batch)
    steps = 0
    while True:
        scale = float(scaler.get_scale()) if scaler.is_enabled() else None  # before the update
        meter.restart()
        take_step(batches, steps)
        accuracy = 100.0 * float(meter.sums[1]) / meter.samples
        if accuracy >= 100.0 or steps >= cfg.train.check_overfit_steps:
            return steps, accuracy, scale
        steps += 1


def run_check_command(cfg: Config, dist: DistInfo) -> int:
    """`python -m pipeline.train --check`: both checks on this rank's first train batch; every
    rank must pass. Prints the report on rank 0; EXIT_CHECK_FAILED when a rank's overfit fails."""
    device = dist.torch_device
    resolve_precision(cfg.train.precision, device)  # one the device lacks fails before the data
    check_input_sizes(cfg)
    classes = resolve_classes(cfg)
    num_classes = resolve_num_classes(cfg.model, len(classes))
    train_loader = build_loader(cfg, "train", dist, classes)
    train_loader.set_epoch(0)
    images, labels = next(iter(train_loader))
    report = run_checks(cfg, dist, num_classes, images, labels)
    passed = torch.tensor([1 if report.overfit_ok else 0], dtype=torch.int32, device=device)
    all_reduce_sum(passed, dist)
    if dist.is_main:
        for line in report.lines():
            print(line, flush=True)
    return EXIT_OK if int(passed.item()) == dist.world_size else EXIT_CHECK_FAILED
