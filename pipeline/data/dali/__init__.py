"""The `dali` backend: NVIDIA DALI over class folders (fn.readers.file) or shards
(fn.readers.webdataset).

    python -m pipeline.train --config configs/alexnet.yaml data.backend=dali \
        data.dali_decode=mixed data.train_dir=DST/train data.val_dir=DST/val

A directory with manifest.json is read as shards, any other as class folders. Decoding is
`mixed` (nvJPEG on the GPU) or `cpu` (a CPU-only pipeline, `device_id=None`: how CI runs it);
`auto` picks mixed when the training device is a GPU. Threads: data.num_workers.

DALI's own examples shard by local rank and shuffle inside the reader; here the reading plan is
ours, so `dali` visits exactly the samples the other backends visit on each rank:
  * folders: the file list of pipeline/data/plans.py's IndexPlan (the `folder` backend's),
    passed to fn.readers.file as files + labels, unshuffled;
  * shards: the rank's block of the epoch sequence of pipeline/data/plans.py's ShardReadPlan, each
    tar slice shuffled per epoch, written as per-rank DALI index files (the .idx next to each
    tar, cut to the chosen samples in the chosen order) that fn.readers.webdataset follows.
    Nothing outside the rank's block is read.
The pipeline is rebuilt per epoch, at the epoch's train size (`transforms.train_resolution`).

Every random choice of a train sample is drawn on the host from (seed, epoch, sample), the
sample's `Purpose.TRAIN_SAMPLE` stream of the one seed rule (core.seeds), and handed
to the pipeline through fn.external_source (`TrainDraws`), never by DALI's own random operators:
those keep one generator per batch slot, so a resumed epoch could not reproduce them without
decoding every skipped batch. The sample is the file index (folders) or the index in the split
(shards), as in the other backends, so a resume at any batch, across a change of size, decodes
the very same pixels, with any number of threads.

The augmentation is the contract of pipeline/data/transforms.py with DALI operators:
  * train: torchvision's RandomResizedCrop in graph arithmetic (`random_resized_crop`: ten
    tries at the drawn area fractions and log-uniform aspect ratios, the first that fits, else
    the ratio-clamped center crop) → decoders.image_crop (only the window is decoded) → resize
    → mirror; then data.auto_augment with DALI's own nvidia.dali.auto_aug suites
    (TrivialAugmentWide; AutoAugment's ImageNet policy, torchvision's table on auto_aug's
    ops), their op and magnitude choices drawn on the host too and applied with auto_aug's
    `select` (a conditional split of the batch, so the pipeline enables conditionals);
  * val: resize_shorter → center crop.
Outputs are uint8 HWC batches, normalized on the device.

The package, one concern a module: `probe` (is DALI importable, which decoder), `draws` (the
host's draws of a train batch), `autoaugment` (auto_aug's suites and torchvision's ImageNet
policy), `graph` (the contract as DALI operators), `loader` (one pipeline per epoch, driven),
`folders` and `shards` (the two readers and their plans); here, `build_dali_loader` picks one.
"""

from __future__ import annotations

from pathlib import Path

from core.shard_format import MANIFEST_NAME
from pipeline.config import Config
from pipeline.data.base import ClassList
from pipeline.data.dali.folders import DaliFolderLoader
from pipeline.data.dali.loader import DaliLoader
from pipeline.data.dali.probe import import_dali, resolve_decode
from pipeline.data.dali.shards import DaliShardLoader
from pipeline.distributed import DistInfo


def build_dali_loader(
    cfg: Config, split: str, dist: DistInfo, directory: Path, batch_size: int, classes: ClassList
) -> DaliLoader:
    """Shards when `directory` holds manifest.json, else class folders."""
    import_dali()
    decode = resolve_decode(cfg.data.dali_decode, dist)
    if (directory / MANIFEST_NAME).is_file():
        return DaliShardLoader(cfg, split, dist, directory, batch_size, classes, decode)
    return DaliFolderLoader(cfg, split, dist, directory, batch_size, classes, decode)
