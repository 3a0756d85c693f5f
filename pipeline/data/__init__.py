"""Loaders: `build_loader(cfg, split, dist)` over folder, wds or dali backends.

Contract every backend honours (see pipeline/data/transforms.py for the augmentation):
  * iterating yields `(images, labels)`: images uint8 [N, 3, H, W] (channels_last memory
    format when cfg.train.channels_last) on `dist.device`, labels int64 [N] on the same device;
  * `len(loader)` is the number of batches this rank yields in the current epoch, from the
    batch set by `set_epoch(epoch, start_batch)` on;
  * `loader.classes` are WNIDs in class-index (sorted) order; `loader.num_samples` is the size
    of the whole split (all ranks);
  * train: every rank yields the same number of batches (checked with an all-reduce);
    val: every sample is visited exactly once across ranks (batch counts may differ).

    loader = build_loader(cfg, "train", dist)
    for epoch in range(start_epoch, cfg.train.epochs):
        loader.set_epoch(epoch, start_batch=resume_batch if epoch == start_epoch else 0)
        for images, labels in loader:          # uint8 [N,3,H,W] on the device
            logits = model(normalize(images))  # ImageNet mean/std, on the device

Choosing a backend (all three read the same samples on the same rank; see each module):
  * folder: class folders (DST/folders/{train,val}); nothing to convert, many small files;
  * wds: shards (DST/{train,val}); sequential tar reads, the choice for network storage;
  * dali: either layout; `mixed` decodes on the GPU (nvJPEG) when the CPU is the bottleneck.
Modules: base.py (the Loader interface, batch-size and split checks), transforms.py (the
augmentation contract), plans.py (which samples each rank reads), files.py (class-folder
listing), folder.py, wds.py, dali/ (the backends, which never import each other; dali/ is a
package, one module per concern), grid.py (the sanity grid).
"""

from __future__ import annotations

from typing import Literal

from pipeline.config import Config
from pipeline.data.base import ClassList, Loader, per_rank_batch_size, split_directory
from pipeline.data.classes import resolve_classes
from pipeline.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from pipeline.distributed import DistInfo
from pipeline.errors import LoaderError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ClassList",
    "Loader",
    "build_loader",
    "normalize",
    "resolve_classes",
]


def build_loader(
    cfg: Config, split: Literal["train", "val"], dist: DistInfo, classes: ClassList | None = None
) -> Loader:
    """The loader cfg.data.backend names over cfg.data.{split}_dir, for this rank of `dist`.

    `classes` is the run's class list (`resolve_classes(cfg)`, read once by the caller and
    shared by both splits); None reads it here.

    Raises LoaderError (one line: what was wrong and what to do) for bad paths, shards of the
    other split, a manifest that does not match its tars, a batch that does not divide, or a
    DALI request this machine cannot serve.
    """
    batch_size = per_rank_batch_size(cfg, dist)
    directory = split_directory(cfg, split)
    classes = classes if classes is not None else resolve_classes(cfg)
    backend = cfg.data.backend
    # each backend is imported only when chosen: wds needs webdataset, dali needs NVIDIA DALI
    if backend == "folder":
        from pipeline.data.folder import FolderLoader

        return FolderLoader(cfg, split, dist, directory, batch_size, classes)
    if backend == "wds":
        from pipeline.data.wds import WdsLoader

        return WdsLoader(cfg, split, dist, directory, batch_size, classes)
    if backend == "dali":
        from pipeline.data.dali import build_dali_loader

        return build_dali_loader(cfg, split, dist, directory, batch_size, classes)
    raise LoaderError(f"data.backend {backend!r} is not one of folder, wds, dali")
