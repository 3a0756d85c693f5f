"""Reading a run's logged metrics back: RUN_DIR/metrics.jsonl and the W&B offline run's history."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of RUN_DIR/metrics.jsonl. Since the trackers share one resume rule
    (pipeline/tracking/base.py) each (key, step) is in it once; files from before may repeat
    steps after a resume, and readers keep the last row per step."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


_WANDB_HEADER = 7  # ":W&B" + magic 0xBEE1 + version byte
_BLOCK = 32768  # LevelDB log block size used by the .wandb transaction log


def read_wandb_records(path: str | Path):
    """Yield the protobuf Records of a .wandb file (LevelDB log format: 32 KiB blocks, 7-byte record
    headers)."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    offset = _WANDB_HEADER
    pending = b""
    while offset + 7 <= len(data):
        block_left = _BLOCK - offset % _BLOCK
        if block_left < 7:  # trailer padding
            offset += block_left
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[offset : offset + 7])
        payload = data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind == 0 and length == 0:
            offset += _BLOCK - offset % _BLOCK if offset % _BLOCK else 0
            continue
        if kind == 1:  # FULL
            pending = payload
        elif kind == 2:  # FIRST
            pending = payload
            continue
        elif kind == 3:  # MIDDLE
            pending += payload
            continue
        elif kind == 4:  # LAST
            pending += payload
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        pending = b""
        yield record


def read_wandb_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The history rows (key → value) of every W&B offline run under RUN_DIR/wandb, in log order."""
    rows = []
    for path in sorted(Path(run_dir).glob("wandb/*run-*/run-*.wandb")):
        for record in read_wandb_records(path):
            if record.WhichOneof("record_type") != "history":
                continue
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                try:
                    row[key] = json.loads(item.value_json)
                except (ValueError, TypeError):
                    row[key] = item.value_json
            rows.append(row)
    return rows
