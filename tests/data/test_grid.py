"""The sanity grid of a loaded batch."""

from __future__ import annotations

from loaderfixtures import single_rank, tiny_config
from PIL import Image

from pipeline.data import build_loader, normalize
from pipeline.data.grid import save_batch_grid


def test_a_loaded_batch_becomes_a_labelled_png_from_uint8_or_normalized_images(
    tiny_folders, tmp_path
):
    loader = build_loader(
        tiny_config(tiny_folders["train"], tiny_folders["val"]), "train", single_rank()
    )
    images, labels = next(iter(loader))
    names = [loader.class_names.get(wnid, wnid) for wnid in loader.classes]
    path = save_batch_grid(
        images, labels, names, tmp_path / "plots" / "train_batch.png", max_images=6
    )
    with Image.open(path) as grid:
        assert grid.format == "PNG" and grid.width > 100 and grid.height > 50
    again = save_batch_grid(normalize(images), labels, names, tmp_path / "normalized.png")
    assert again.is_file() and again.stat().st_size > 1000
