"""Shards to object storage: `prepare RAW s3://bucket/prefix` and `upload STAGING URL`.

    python -m preprocess prepare RAW s3://bucket/imagenet                 # stage, upload, verify
    python -m preprocess prepare RAW s3://bucket/imagenet --staging /scratch/stage
    python -m preprocess upload /scratch/stage s3://bucket/imagenet        # a staged `prepare`
    python -m preprocess verify s3://bucket/imagenet                       # sizes and sha256

`prepare` to a URL writes everything locally first, in a staging folder (`--staging`; default
`$TMPDIR/imagenet-prepare/<bucket>/<prefix>`, the temp dir when TMPDIR is unset): the resized
folders, the shards, their DALI indexes and manifests, exactly as a local `prepare` into that
folder (it resumes the same way). Then it uploads, in this order:
  1. every shard tar with its .idx, each read back once and checked against its size and sha256
     (a verified upload); a hidden `.NAME.uploaded.json` beside the local tar records it;
  2. train/ and val/ manifest.json and _info.json, LOC_synset_mapping.txt and prepare.json;
  3. the top-level _info.json, last.
So a bucket without its _info.json and manifests never looks complete, and `verify` refuses it.
A rerun resumes: a shard whose object is already there with the recorded size and sha256 (the
upload record, else the object streamed and hashed) is skipped. Only once everything is
uploaded and verified is the staging folder removed (`--keep-staging` keeps it).

Slurm (slurm/submit_preprocess.sh with DST=s3://...): every `--stage shard` task of an array
uploads its own shards (its `manifest.task-*.json`); the finish job merges the staged manifests
and runs `upload`, which uploads what is left, then the manifests and _info.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from core.errors import UserError
from core.fileio import atomic_write_text
from core.remote import IntegrityError, RemoteDir, is_remote, redact
from core.shard_format import (
    MANIFEST_NAME,
    SPLITS,
    TIMM_INFO_NAME,
    ShardEntry,
    dali_index_name,
    read_manifest,
)

logger = logging.getLogger(__name__)

TOP_LEVEL_FILES = ("LOC_synset_mapping.txt", "prepare.json")  # then _info.json, last


def default_staging(url: str) -> Path:
    """$TMPDIR/imagenet-prepare/<bucket>/<prefix>: the same folder for every rerun."""
    where = redact(url).split("://", 1)[1].strip("/")
    parts = [re.sub(r"[^A-Za-z0-9._-]+", "_", part) for part in where.split("/") if part]
    return Path(os.environ.get("TMPDIR") or tempfile.gettempdir(), "imagenet-prepare", *parts)


def uploaded_record(split_dir: Path, tar_name: str) -> Path:
    return split_dir / f".{tar_name}.uploaded.json"


class _Discard:
    def write(self, data: bytes) -> int:
        return len(data)


class Uploader:
    """Uploads a staged `prepare` output to a URL, shard by shard, resumable."""

    def __init__(self, staging: Path, url: str) -> None:
        self.staging = Path(staging)
        self.url = url.rstrip("/")
        self.store = RemoteDir(self.url)
        self.uploaded = 0
        self.skipped = 0

    def splits(self) -> list[str]:
        return [split for split in SPLITS if (self.staging / split).is_dir()]

    def upload_shards(self, split: str, entries: list[ShardEntry]) -> None:
        for entry in entries:
            self.upload_shard(split, entry)

    def upload_shard(self, split: str, entry: ShardEntry) -> None:
        """One tar and its .idx: skipped when already there; else uploaded and read back."""
        split_dir = self.staging / split
        name, index = f"{split}/{entry.name}", f"{split}/{dali_index_name(entry.name)}"
        index_bytes = (split_dir / dali_index_name(entry.name)).read_bytes()
        if self._already_uploaded(split_dir, entry, name, index, len(index_bytes)):
            self.skipped += 1
            return
        self.store.put_file(str(split_dir / entry.name), name)
        self.store.put_file(str(split_dir / dali_index_name(entry.name)), index)
        remote = ShardEntry(name, entry.count, entry.bytes, entry.sha256)
        self.store.fetch_verified(remote, _Discard())  # IntegrityError names the shard
        if self.store.read_bytes(index, "DALI index") != index_bytes:
            raise IntegrityError(f"{self.store.object_url(index)}: differs after upload: rerun")
        self._record(split_dir, entry)
        self.uploaded += 1
        logger.info("uploaded %s (%d bytes)", self.store.object_url(name), entry.bytes)

    def _already_uploaded(
        self, split_dir: Path, entry: ShardEntry, name: str, index: str, index_size: int
    ) -> bool:
        if self.store.size(name) != entry.bytes or self.store.size(index) != index_size:
            return False
        record_path = uploaded_record(split_dir, entry.name)
        try:
            record = json.loads(record_path.read_text())
        except (OSError, json.JSONDecodeError):
            record = {}
        if record.get("bytes") == entry.bytes and record.get("sha256") == entry.sha256:
            return True
        if self.store.sha256(name, entry.bytes) != entry.sha256:
            return False
        self._record(split_dir, entry)
        return True

    @staticmethod
    def _record(split_dir: Path, entry: ShardEntry) -> None:
        text = json.dumps({"bytes": entry.bytes, "name": entry.name, "sha256": entry.sha256})
        atomic_write_text(uploaded_record(split_dir, entry.name), text + "\n")

    def finish(self) -> None:
        """Every split's shards, then the manifests and small files, the top _info.json last."""
        splits = self.splits()
        if not splits:
            raise UserError(f"{self.staging} has neither train/ nor val/: nothing to upload")
        manifests = {split: read_manifest(self.staging / split) for split in splits}
        for split in splits:
            self.upload_shards(split, manifests[split].shards)
        for split in splits:
            for small in (MANIFEST_NAME, TIMM_INFO_NAME):
                self._put_small(f"{split}/{small}")
        for small in (*TOP_LEVEL_FILES, TIMM_INFO_NAME):
            self._put_small(small)

    def _put_small(self, relative: str) -> None:
        path = self.staging / relative
        if path.is_file():
            self.store.put_file(str(path), relative)
            if self.store.read_bytes(relative) != path.read_bytes():
                raise IntegrityError(f"{self.store.object_url(relative)}: differs after upload")

    def line(self) -> str:
        return (
            f"upload: {self.uploaded} shards uploaded, {self.skipped} already there, "
            f"to {redact(self.url)}"
        )


def upload_task_shards(staging: Path, url: str, splits, task_index: int, num_tasks: int) -> str:
    """A `--stage shard` task's own shards (its partial manifest; a one-task stage's manifest),
    no manifest: the finish job's `upload` writes those, last."""
    uploader = Uploader(staging, url)
    for split in splits:
        partial = staging / split / f"manifest.task-{task_index:04d}-of-{num_tasks:04d}.json"
        if partial.is_file():
            shards = json.loads(partial.read_text())["shards"]
            uploader.upload_shards(split, [ShardEntry(**shard) for shard in shards])
        elif (staging / split / MANIFEST_NAME).is_file():
            uploader.upload_shards(split, read_manifest(staging / split).shards)
    return uploader.line() + "; the manifests follow with `upload` (the Slurm finish job)"


def upload_all(staging: Path, url: str, keep_staging: bool = False) -> str:
    """Upload a complete staged output, verified; then remove the staging folder."""
    uploader = Uploader(staging, url)
    uploader.finish()
    if not keep_staging:
        shutil.rmtree(staging)
        return uploader.line() + f"; removed the staging folder {staging}"
    return uploader.line() + f"; kept the staging folder {staging}"


def add_staging_arguments(parser: argparse.ArgumentParser) -> None:
    """`prepare`'s options for a URL DST."""
    parser.add_argument(
        "--staging",
        type=Path,
        default=None,
        help="with a URL DST: the local folder to write in first (default "
        "$TMPDIR/imagenet-prepare/BUCKET/PREFIX; shared storage for Slurm arrays)",
    )
    parser.add_argument(
        "--keep-staging", action="store_true", help="keep the staging folder after the upload"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("staging", type=Path, help="a `prepare` output (its train/ and val/)")
    parser.add_argument("url", help="where to: s3://bucket/prefix (any writable fsspec URL)")
    parser.add_argument(
        "--keep-staging", action="store_true", help="keep STAGING after a verified upload"
    )


def run(args: argparse.Namespace) -> int:
    if not is_remote(args.url):
        raise UserError(f"{args.url}: expected a URL such as s3://bucket/prefix")
    print(upload_all(args.staging, args.url, keep_staging=args.keep_staging))
    return 0
