"""What `prepare` leaves in DST beside the data, and the gate between its two stages.

DST/prepare.json (the dataset and subset rule: a rerun with others is refused),
DST/folders/{split}/selection.json (a subset's choice), DST/LOC_synset_mapping.txt (class
names), and `check_resized`: the shard stage runs only when every resize task finished.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from core.classes import SYNSET_MAPPING_NAME, find_synset_mapping
from core.errors import UserError
from core.fileio import atomic_write_text, file_names, list_dir
from core.imagefiles import is_image_file
from preprocess.resize_records import ResizeCompletion, check_resize_complete, check_settings_match
from preprocess.resize_worker import ResizeOptions

logger = logging.getLogger(__name__)

PREPARE_RECORD_NAME = "prepare.json"


SELECTION_NAME = "selection.json"


def check_prepare_record(dst: Path, record: dict[str, Any]) -> None:
    """Refuse a DST prepared from another dataset or subset; record this run's when fresh."""
    path = dst / PREPARE_RECORD_NAME
    try:
        previous = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        previous = None
    if previous is not None and previous != record:
        raise UserError(
            f"{dst} was prepared from {previous.get('dataset')} with subset "
            f"{previous.get('subset')}, but this run asks for {record['dataset']} with subset "
            f"{record['subset']}: resuming would mix the two; pass a new DST"
        )
    if previous is None:
        dst.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n")


def read_selection(folder: Path) -> dict | None:
    """The subset record the resize stage left in DST/folders/{split}, if any."""
    try:
        return json.loads((folder / SELECTION_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_class_names(
    raw: Path, dst: Path, class_names: dict[str, str], *, copy_raw: bool = True
) -> Path | None:
    """DST/LOC_synset_mapping.txt: the raw data's file copied as is (`copy_raw`: every class is
    taken), else written from `class_names`."""
    target = dst / SYNSET_MAPPING_NAME
    source = find_synset_mapping(raw, parents=0) if copy_raw and raw.is_dir() else None
    if source is None and copy_raw and raw.is_dir():
        candidates = [
            path
            for path in (raw / SYNSET_MAPPING_NAME, *raw.glob(f"*/{SYNSET_MAPPING_NAME}"))
            if path.is_file()
        ]
        source = candidates[0] if candidates else None
    if source is not None:
        shutil.copyfile(source, target)
        return target
    if class_names:
        atomic_write_text(
            target, "".join(f"{wnid} {words}\n" for wnid, words in sorted(class_names.items()))
        )
        return target
    logger.info("no class names found in %s: the grid and manifests will show WNIDs only", raw)
    return None


def count_folder_images(folder: Path) -> dict[str, int]:
    return {
        name: len(file_names(Path(folder) / name, is_image_file))
        for name, is_dir in list_dir(Path(folder))
        if is_dir
    }


def check_resized(folder: Path, options: ResizeOptions | None) -> ResizeCompletion:
    """The shard stage's gate: every resize task finished, with the settings asked for, and the
    folders hold what they planned minus what they reported as bad."""
    if not folder.is_dir():
        raise UserError(f"{folder} does not exist: run the resize stage first (--stage resize)")
    completion = check_resize_complete(folder)
    if options is not None:
        check_settings_match(folder, options)
    on_disk = count_folder_images(folder)
    extra = sorted(
        wnid for wnid, count in on_disk.items() if count > completion.class_counts.get(wnid, 0)
    )
    found = sum(on_disk.values())
    if extra or found != completion.planned - completion.failed:
        raise UserError(
            f"{folder}: {found} images, but the resize tasks planned {completion.planned} "
            "and reported "
            f"{completion.failed} bad"
            + (f" (more than planned in {extra[:3]})" if extra else "")
            + ": rerun the resize stage (it resumes) before sharding"
        )
    return completion
