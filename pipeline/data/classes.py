"""The run's class list, read once and passed to every loader, the model and the metrics.

    classes = resolve_classes(cfg)          # from the train split's manifest or class folders
    train = build_loader(cfg, "train", dist, classes)
    val = build_loader(cfg, "val", dist, classes)   # val labels index the train list

Class index = position of the WNID in sorted order (what ImageFolder, torchvision and timm use).
Val must use the train split's list: a val split missing a class would otherwise shift every
later class index by one. Names come from the manifest, else from a LOC_synset_mapping.txt in
the split directory or up to two levels above it.
"""

from __future__ import annotations

from pathlib import Path

from core.classes import find_class_names
from core.remote import RemoteDir, is_remote, redact
from core.shard_format import MANIFEST_NAME, ManifestError, read_manifest
from pipeline.config import Config
from pipeline.data.base import ClassList, split_directory
from pipeline.data.files import class_folder_names
from pipeline.errors import LoaderError


def resolve_classes(cfg: Config) -> ClassList:
    """The classes of the train split (manifest.json, else its class folders); the val split's
    when no train split is configured or present (`--evaluate` with only data.val_dir)."""
    if is_remote(cfg.data.train_dir) or (not cfg.data.train_dir and is_remote(cfg.data.val_dir)):
        url = cfg.data.train_dir or cfg.data.val_dir
        manifest = RemoteDir(url).read_manifest()  # shards only: the manifest lists the classes
        return ClassList(tuple(manifest.classes), dict(manifest.class_names or {}), redact(url))
    train_dir = Path(cfg.data.train_dir).expanduser() if cfg.data.train_dir else None
    split = "train" if train_dir is not None and train_dir.is_dir() else "val"
    directory = split_directory(cfg, split)
    if (directory / MANIFEST_NAME).is_file():
        try:
            manifest = read_manifest(directory)  # the loaders check its split and tars
        except ManifestError as err:
            raise LoaderError(str(err)) from err
        names = manifest.class_names or find_class_names(directory)
        return ClassList(tuple(manifest.classes), dict(names), directory)
    found = class_folder_names(directory)
    return ClassList(tuple(found), find_class_names(directory), directory)
