"""Batch-level augmentation on the device, after the loader, so it is the same for every backend:
mixup, cutmix and random erasing, and the soft-target cross-entropy they train with.

    augment = BatchAugment(cfg.augment, num_classes, cfg.optim.label_smoothing)
    inputs, targets = augment(normalize(images), labels, generator)   # targets: [B, C] or None
    loss = soft_cross_entropy(logits, targets) if targets is not None else criterion(logits, labels)

Every random draw comes from `generator`, a CPU torch.Generator the step seeds from
(seed, rank, step, micro-batch): a resumed run mixes exactly as an uninterrupted one, and no
draw reads a device value back (no host sync). The box and mask arithmetic runs on the CPU;
only the blending and the erasing touch the device tensors.

Mixing follows timm's Mixup in batch mode: with probability `mix_prob` a batch is mixed with
its reverse (image i with image B-1-i), by mixup (x = lam x + (1 - lam) x') or, with
probability `switch_prob` when both alphas are set, cutmix (a box of area 1 - lam pasted from
x'; lam is then the box's actual area). Targets are the smoothed one-hot labels mixed the same
way. Random erasing follows torchvision's RandomErasing (scale 0.02-0.33, ratio 0.3-3.3, ten
tries, value 0, which is the mean after normalization), per image with probability p.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pipeline.config import AugmentConfig


class BatchAugment:
    """mixup / cutmix / random erasing, each off unless configured."""

    def __init__(self, cfg: AugmentConfig, num_classes: int, label_smoothing: float = 0.0):
        self.cfg = cfg
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing

    @property
    def mixes(self) -> bool:
        return self.cfg.mixup_alpha > 0 or self.cfg.cutmix_alpha > 0

    @property
    def enabled(self) -> bool:
        return self.mixes or self.cfg.random_erase > 0

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(images, soft targets [B, C] or None when this batch is not mixed).

        images: float [B, 3, H, W] on the device, normalized; labels: int64 [B]."""
        targets = None
        if self.mixes:
            images, targets = self.mix(images, labels, generator)
        if self.cfg.random_erase > 0:
            images = self.erase(images, generator)
        return images, targets

    def one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        off = self.label_smoothing / self.num_classes
        targets = torch.full(
            (labels.shape[0], self.num_classes), off, device=labels.device, dtype=torch.float32
        )
        return targets.scatter_(1, labels.unsqueeze(1), 1.0 - self.label_smoothing + off)

    def mix(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        targets = self.one_hot(labels)
        if uniform(generator) >= cfg.mix_prob:
            return images, targets
        use_cutmix = cfg.cutmix_alpha > 0 and (
            cfg.mixup_alpha <= 0 or uniform(generator) < cfg.switch_prob
        )
        alpha = cfg.cutmix_alpha if use_cutmix else cfg.mixup_alpha
        lam = beta(alpha, generator)
        partner = images.flip(0)  # image i pairs with image B-1-i
        if use_cutmix:
            height, width = images.shape[-2:]
            top, bottom, left, right = cutmix_box(height, width, lam, generator)
            images = images.clone()
            images[:, :, top:bottom, left:right] = partner[:, :, top:bottom, left:right]
            lam = 1.0 - (bottom - top) * (right - left) / (height * width)
        else:
            images = images.mul(lam).add_(partner, alpha=1.0 - lam)
        return images, targets.mul(lam).add_(targets.flip(0), alpha=1.0 - lam)

    def erase(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        height, width = images.shape[-2:]
        boxes = []
        for index in range(images.shape[0]):
            if uniform(generator) >= self.cfg.random_erase:
                continue
            box = erasing_box(height, width, generator)
            if box is not None:
                boxes.append((index, *box))
        if not boxes:
            return images
        images = images.clone()
        for index, top, left, box_height, box_width in boxes:
            images[index, :, top : top + box_height, left : left + box_width] = 0.0
        return images


def uniform(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator))


def beta(alpha: float, generator: torch.Generator) -> float:
    """A Beta(alpha, alpha) draw from `generator` (two Gamma draws: torch's Beta takes none)."""
    concentration = torch.full((2,), float(alpha))
    gammas = torch._standard_gamma(concentration, generator=generator)
    return float(gammas[0] / gammas.sum())


def cutmix_box(
    height: int, width: int, lam: float, generator: torch.Generator
) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a box of about (1 - lam) of the area, centred uniformly
    and clipped to the image (the CutMix paper's sampling)."""
    cut = math.sqrt(1.0 - lam)
    box_height, box_width = int(height * cut), int(width * cut)
    centre_y = int(torch.randint(height, (), generator=generator))
    centre_x = int(torch.randint(width, (), generator=generator))
    top, bottom = max(centre_y - box_height // 2, 0), min(centre_y + box_height // 2, height)
    left, right = max(centre_x - box_width // 2, 0), min(centre_x + box_width // 2, width)
    return top, bottom, left, right


def erasing_box(
    height: int,
    width: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
) -> tuple[int, int, int, int] | None:
    """(top, left, height, width) of torchvision's RandomErasing box, or None after ten tries."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * uniform(generator))
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * uniform(generator))
        box_height = int(round(math.sqrt(target * aspect)))
        box_width = int(round(math.sqrt(target / aspect)))
        if box_height < height and box_width < width:
            top = int(torch.randint(height - box_height + 1, (), generator=generator))
            left = int(torch.randint(width - box_width + 1, (), generator=generator))
            return top, left, box_height, box_width
    return None


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum(targets * log_softmax(logits)); targets [B, C] sum to 1."""
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=1), dim=1).mean()
