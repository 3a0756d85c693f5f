"""The host side of a DALI train batch's random choices: each sample's `Purpose.TRAIN_SAMPLE`
stream (core.seeds) read as uniforms, turned into the crop, flip and auto-augment columns that
fn.external_source hands the graph."""

from __future__ import annotations

import numpy as np

from core.seeds import Purpose, stream_seeds, uniforms
from pipeline.data.transforms import Augmentation

CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop.get_params tries


def sample_uniforms(seed: int, epoch: int, samples: np.ndarray, count: int) -> np.ndarray:
    """float64 [len(samples), count] in [0, 1): each sample's `Purpose.TRAIN_SAMPLE` stream, the
    very seed the DataLoader backends' `transforms.sample_rng` starts from, read as uniforms.

    Vectorized (`core.seeds.stream_seeds` + `uniforms`) because it runs on the thread that feeds
    the pipeline; a seeded random.Random per sample, as the DataLoader backends use, costs
    ~28 µs, spread over their workers (the project's 2-core VM, 2026-11).
    """
    return uniforms(stream_seeds(seed, Purpose.TRAIN_SAMPLE, epoch, samples), count)


class TrainDraws:
    """The host side of every random choice of a train batch: `columns(samples)` gives the
    external_source outputs, one per name in `names` (the graph reads them by those names).

    crop: area fractions [10] and aspect ratios [10] (the ten tries), window position [2];
    flip; auto_augment: trivial: op index, magnitude bin, sign; imagenet: per stage of the
    policy, the op index (identity when the stage does not run), magnitude bin and sign.
    """

    def __init__(self, aug: Augmentation, seed: int, epoch: int, auto_aug) -> None:
        self.aug, self.seed, self.epoch, self.auto_aug = aug, seed, epoch, auto_aug
        self.names = ["fraction", "aspect", "position", "flip"] + (
            auto_aug.column_names if auto_aug is not None else []
        )

    def columns(self, samples: np.ndarray) -> list[np.ndarray]:
        """One dense array per external_source output, first dimension the batch."""
        aug = self.aug
        extra = self.auto_aug.num_uniforms if self.auto_aug is not None else 0
        draws = sample_uniforms(self.seed, self.epoch, samples, 2 * CROP_ATTEMPTS + 3 + extra)
        tries = slice(0, CROP_ATTEMPTS), slice(CROP_ATTEMPTS, 2 * CROP_ATTEMPTS)
        low, high = aug.scale
        fraction = low + (high - low) * draws[:, tries[0]]
        log_low, log_high = np.log(aug.ratio[0]), np.log(aug.ratio[1])
        aspect = np.exp(log_low + (log_high - log_low) * draws[:, tries[1]])
        rest = 2 * CROP_ATTEMPTS
        position = draws[:, rest : rest + 2]  # [N, 2]: x, y of the window, 0..1
        flip = (draws[:, rest + 2] < aug.flip_prob).astype(np.int32)
        columns = [
            fraction.astype(np.float32),
            aspect.astype(np.float32),
            position.astype(np.float32),
            flip,
        ]
        if self.auto_aug is not None:
            columns.extend(self.auto_aug.columns(draws[:, rest + 3 :]))
        return columns
