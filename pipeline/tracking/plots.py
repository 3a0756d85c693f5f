"""PNG plots of a run: loss and accuracy curves from metrics.jsonl, and the prediction grid."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.tracking.history import read_metrics


def plot_curves(run_dir: str | Path) -> list[Path]:
    """loss.png and accuracy.png from metrics.jsonl (train per log window, val per eval)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    if not rows:
        return []
    plots_dir = run_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)

    def series(key: str) -> tuple[list[float], list[float]]:
        by_step: dict[int, float] = {}
        epochs: dict[int, float] = {}
        for row in rows:
            value = row.get(key)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                by_step[row["step"]] = value  # a resumed run re-logs some steps: keep the latest
                epochs[row["step"]] = row.get("epoch", 0.0)
        steps = sorted(by_step)
        return [epochs[s] for s in steps], [by_step[s] for s in steps]

    written = []
    for name, keys, ylabel in (
        ("loss", ("train/loss", "val/loss"), "cross-entropy"),
        ("accuracy", ("train/top1", "val/top1", "val/top5"), "accuracy (%)"),
    ):
        figure, axis = plt.subplots(figsize=(7, 4.5))
        for key in keys:
            x, y = series(key)
            if x:
                axis.plot(
                    x, y, marker="o" if key.startswith("val") else None, markersize=3, label=key
                )
        axis.set_xlabel("epoch")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        axis.legend()
        figure.tight_layout()
        path = plots_dir / f"{name}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


def save_prediction_grid(
    images, labels, predictions, class_names: list[str], path: Path, max_images: int = 32
) -> Path:
    """Val images captioned 'ok|WRONG: predicted / true' class names."""
    from core.grid import render_grid

    count = min(len(images), max_images)
    pictures: list[np.ndarray] = []
    captions: list[str] = []
    for index in range(count):
        image = images[index]
        array = (
            image.detach().cpu().contiguous().permute(1, 2, 0).numpy()
            if hasattr(image, "detach")
            else np.asarray(image)
        )
        pictures.append(np.ascontiguousarray(array.astype(np.uint8)))
        true_index, predicted_index = int(labels[index]), int(predictions[index])
        mark = "ok" if true_index == predicted_index else "WRONG"
        captions.append(
            f"{mark}: {_short(class_names, predicted_index)} / {_short(class_names, true_index)}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    return render_grid(pictures, captions, path, columns=8)


def _short(class_names: Sequence[str], index: int) -> str:
    name = class_names[index] if 0 <= index < len(class_names) else str(index)
    return name.split(",")[0][:18]
