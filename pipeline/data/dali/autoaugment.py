"""data.auto_augment on DALI: nvidia.dali.auto_aug's suites and torchvision's ImageNet policy
table on auto_aug's ops, each choice read from the host's draws (`draws.TrainDraws`)."""

from __future__ import annotations

import numpy as np

from pipeline.errors import LoaderError

TRIVIAL_BINS = 31  # TrivialAugmentWide's magnitude bins (torchvision and DALI)


# AutoAugment's ImageNet policy (Cubuk et al., 2019) as torchvision's AutoAugmentPolicy.IMAGENET
# lists it, the op the folder and wds backends run: per sub-policy, (op, probability, magnitude
# bin of 10). DALI's own get_image_net_policy is another policy (policy_v0 of TensorFlow's TPU
# reference), so it is not used: the backends would not agree (tests/data/test_auto_augment.py).
IMAGENET_POLICY = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
    (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
)
IMAGENET_BINS = 10


def imagenet_policy_ops(augmentations) -> dict:
    """nvidia.dali.auto_aug's augmentations at torchvision's AutoAugment magnitudes (10 bins):
    shear 0–0.3, rotate 0–30°, enhance factors 1 ± 0–0.9 (all signed), posterize keeping
    8, 8, 7, 7, 6, 6, 5, 5, 4, 4 bits, solarize at 255 → 0."""
    a = augmentations
    posterize_bits = 8 - np.round(np.arange(IMAGENET_BINS) / ((IMAGENET_BINS - 1) / 4))
    return {
        "ShearX": a.shear_x.augmentation((0, 0.3), True),
        "Rotate": a.rotate.augmentation((0, 30), True),
        "Color": a.color.augmentation((0, 0.9), True, a.shift_enhance_range),
        "Contrast": a.contrast.augmentation((0, 0.9), True, a.shift_enhance_range),
        "Sharpness": a.sharpness.augmentation((0, 0.9), True, a.sharpness_kernel),
        "Posterize": a.posterize.augmentation(posterize_bits, False, a.poster_mask_uint8),
        "Solarize": a.solarize.augmentation((255, 0), False),
        "AutoContrast": a.auto_contrast,
        "Equalize": a.equalize,
        "Invert": a.invert,
    }


class DaliAutoAugment:
    """data.auto_augment with nvidia.dali.auto_aug, its random choices made on the host.

    TrivialAugment is DALI's `get_trivial_augment_wide_suite` (the 14 ops and 31 bins of
    torchvision's TrivialAugmentWide); AutoAugment is `IMAGENET_POLICY` on DALI's augmentations
    (`imagenet_policy_ops`). What replaces auto_aug's fn.random draws is the same choice made
    from `sample_uniforms`: TrivialAugment picks one op uniformly, a bin uniformly and a sign;
    AutoAugment picks one of the 25 sub-policies and runs each of its two stages with the
    stage's probability, with a random sign. Geometric ops fill with black and interpolate
    bilinearly, as the torchvision ops of the other backends do; TrivialAugment translates by
    up to 32 px, as torchvision's does. Op for op the outputs match torchvision's within a grey
    level or two, except equalize, which follows OpenCV's formula (~3 levels from PIL's) and
    shear, whose sign convention is the mirror of torchvision's (the sign is random anyway).
    """

    def __init__(self, name: str) -> None:
        try:
            from nvidia.dali.auto_aug import augmentations, trivial_augment
            from nvidia.dali.auto_aug.core import select, signed_bin
        except ImportError as err:
            raise LoaderError(
                f"data.auto_augment={name} on data.backend=dali needs nvidia.dali.auto_aug "
                f"(DALI >= 1.24), which is not importable here ({err}): upgrade nvidia-dali, "
                "use data.backend=folder or wds, or set data.auto_augment=none"
            ) from err
        self.name = name
        self.select, self.signed_bin = select, signed_bin
        if name == "trivial":
            self.stages = [
                trivial_augment.get_trivial_augment_wide_suite(
                    use_shape=False, max_translate_abs=32
                )
            ]
            self.num_bins = TRIVIAL_BINS
            self.num_uniforms = 3
        elif name == "imagenet":
            ops = imagenet_policy_ops(augmentations)
            sub_policies = [
                [(ops[op], probability, magnitude) for op, probability, magnitude in sub_policy]
                for sub_policy in IMAGENET_POLICY
            ]
            self.num_bins = IMAGENET_BINS
            self._build_policy_tables(sub_policies, augmentations.identity)
            self.num_uniforms = 1 + 2 * len(self.stages)
        else:
            raise LoaderError(f"data.auto_augment {name!r} is not one of trivial, imagenet")
        self.column_names = [
            f"{part}{stage}" for stage in range(len(self.stages)) for part in ("op", "bin", "sign")
        ]

    def _build_policy_tables(self, sub_policies, identity) -> None:
        """Per stage, the distinct ops any sub-policy runs there (+ identity), and per
        sub-policy and stage: that op's index, its probability and its magnitude bin."""
        num_stages = max(len(sub_policy) for sub_policy in sub_policies)
        self.stages = []
        for stage in range(num_stages):
            ops = []
            for sub_policy in sub_policies:
                if stage < len(sub_policy) and sub_policy[stage][0] not in ops:
                    ops.append(sub_policy[stage][0])
            self.stages.append([*ops, identity])
        shape = (len(sub_policies), num_stages)
        self.op_table = np.empty(shape, np.int32)
        self.probability = np.zeros(shape, np.float64)
        self.bin_table = np.zeros(shape, np.int32)
        for row, sub_policy in enumerate(sub_policies):
            for stage in range(num_stages):
                if stage < len(sub_policy):
                    op, probability, magnitude = sub_policy[stage]
                    self.op_table[row, stage] = self.stages[stage].index(op)
                    self.probability[row, stage] = probability
                    self.bin_table[row, stage] = magnitude or 0
                else:
                    self.op_table[row, stage] = len(self.stages[stage]) - 1  # identity

    def columns(self, uniforms: np.ndarray) -> list[np.ndarray]:
        """uniforms [N, num_uniforms] → (op, bin, sign) int32 [N] per stage."""
        if self.name == "trivial":
            # uniforms < 1, so the products stay below their counts (the minimum guards rounding)
            ops = len(self.stages[0])
            op = np.minimum((uniforms[:, 0] * ops).astype(np.int32), ops - 1)
            bins = self.num_bins
            magnitude = np.minimum((uniforms[:, 1] * bins).astype(np.int32), bins - 1)
            sign = (uniforms[:, 2] < 0.5).astype(np.int32)
            return [op, magnitude, sign]
        policies = len(self.op_table)
        rows = np.minimum((uniforms[:, 0] * policies).astype(np.int64), policies - 1)
        columns = []
        for stage, ops in enumerate(self.stages):
            runs = uniforms[:, 1 + stage] < self.probability[rows, stage]
            op = np.where(runs, self.op_table[rows, stage], len(ops) - 1).astype(np.int32)
            sign = (uniforms[:, 1 + len(self.stages) + stage] < 0.5).astype(np.int32)
            columns.extend([op, self.bin_table[rows, stage].astype(np.int32), sign])
        return columns

    def apply(self, images, nodes: dict, types):
        """uint8 HWC images → the same, through each stage's selected op."""
        for stage, ops in enumerate(self.stages):
            images = self.select(
                ops,
                nodes[f"op{stage}"],
                data=images,
                magnitude_bin=self.signed_bin(nodes[f"bin{stage}"], nodes[f"sign{stage}"]),
                num_magnitude_bins=self.num_bins,
                fill_value=0,
                interp_type=types.INTERP_LINEAR,
            )
        return images
