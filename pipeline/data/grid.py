"""The sanity grid: a labelled PNG of one loaded, augmented batch, the trainer writes it at start.

    from pipeline.data.grid import save_batch_grid
    images, labels = next(iter(loader))
    names = [loader.class_names.get(w, w) for w in loader.classes]
    save_batch_grid(images, labels, names, run_dir / "plots/train_batch.png")

If the crops, flips or labels are wrong, it shows here before any GPU hour is spent.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from core.grid import render_grid
from pipeline.data.transforms import denormalize


def save_batch_grid(
    images: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    class_names: list[str],
    path: str | Path,
    max_images: int = 32,
) -> Path:
    """Write the first `max_images` of a batch as a labelled PNG; returns the path.

    Args:
        images: [N,3,H,W] uint8 as loaders yield them, or float as `normalize` made them
            (undone here).
        labels: class indices; the caption is "index name" with `class_names[index]`.
    """
    images = images[:max_images].detach()
    if images.dtype != torch.uint8:
        images = denormalize(images)
    pixels = images.permute(0, 2, 3, 1).contiguous().cpu().numpy()  # [N, H, W, 3] uint8
    labels = [
        int(label) for label in (labels.tolist() if isinstance(labels, torch.Tensor) else labels)
    ][:max_images]
    captions = []
    for label in labels:
        name = class_names[label] if 0 <= label < len(class_names) else "?"
        name = name.split(",")[0]
        captions.append(f"{label} {name[:20]}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return render_grid(list(pixels), captions, path)
