"""The labelled grid: HWC images with a caption under each, as one PNG.

Shared by `preprocess grid` (the sanity check before training), the loaders' batch grid and the
trainer's prediction grid; it needs matplotlib (imported when a grid is drawn), not torch.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def render_grid(
    images: Sequence[np.ndarray], captions: Sequence[str], path: Path, columns: int = 8
) -> Path:
    """Save HWC uint8 RGB `images` with `captions` under each as one PNG at `path`; returns path."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    if not images:
        raise ValueError("render_grid needs at least one image")
    columns = max(1, min(columns, len(images)))
    rows = (len(images) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(2.0 * columns, 2.35 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, caption in zip(axes.flat, images, captions):
        array = np.asarray(image)
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
            raise ValueError(f"expected HWC images, got shape {array.shape}")
        axis.imshow(
            array if array.shape[-1] != 1 else array[..., 0],
            cmap="gray" if array.shape[-1] == 1 else None,
        )
        axis.set_title("\n".join(textwrap.wrap(caption, 26)[:3]), fontsize=7)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def caption(label: int, wnid: str, class_names: dict[str, str]) -> str:
    name = class_names.get(wnid, "").split(",")[0]
    return f"{label} {wnid}" + (f"\n{name}" if name else "")
