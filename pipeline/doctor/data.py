"""Data: how fast the train dir reads, and how fast each loader backend decodes and augments it.

    layouts = find_layouts(Path(cfg.data.train_dir))     # {"shards": DST/train, "folders": ...}
    measured = measure_data(cfg, dist, budget)           # every rank, no collectives inside
    checks, summary = summarize_data(cfg, per_rank, ranks_per_node)   # rank 0

The same data in its other form is found where `python -m preprocess prepare` puts it: shards in
DST/<split>, class folders in DST/folders/<split>. Only what exists is measured.

Reading: each rank reads its own share of the files (shards: whole tars in 8 MiB reads; folders:
a seeded sample of image files), after asking the kernel to drop them from the page cache
(posix_fadvise DONTNEED), so a dataset written a minute ago still reads at disk speed. MB/s and
files/s are summed over the ranks of a node, which read at the same time, as training does.

The JPEGs: the headers of up to 32 of the files just read (or of the first shard's samples) say
whether they carry a restart marker after every MCU (what preprocess writes, core/jpegfile.py),
which lets the ROI decoder decode only each crop's MCUs.

Decoding: the real `build_loader(..., "train", ...)` of each backend (the configured one, and
folder / wds / dali cpu / dali mixed where the data and the machine have them), at the configured
batch size per rank and data.num_workers, iterated to the training device for a fixed time after
a warm-up. The loaders see a rank-local view of the world (`backend=None`): each rank reads its
own share of the samples, but no loader waits for another rank, so a time-bounded loop is safe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import itertools
import os
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.cputime import process_tree_cpu_seconds
from core.jpegfile import RESTART_INTERVAL, restart_interval
from core.remote import is_remote, scrub
from core.shard_format import MANIFEST_NAME
from pipeline.config import Config, DataConfig, replace
from pipeline.data import build_loader, jpeg, resolve_classes
from pipeline.data.base import split_directory
from pipeline.data.files import list_class_folders
from pipeline.data.plans import open_manifest
from pipeline.data.threads import use_threads
from pipeline.distributed import DistInfo, synchronize
from pipeline.doctor.report import Check
from pipeline.errors import UserError, first_line

MB = 1e6
READ_CHUNK = 8 * 2**20


def find_layouts(train_dir: Path) -> dict[str, Path]:
    """The train data's forms that exist: {"shards": DST/train, "folders": DST/folders/train}."""
    layouts: dict[str, Path] = {}
    if (train_dir / MANIFEST_NAME).is_file():
        layouts["shards"] = train_dir
        folders = train_dir.parent / "folders" / train_dir.name
        if folders.is_dir():
            layouts["folders"] = folders
    elif train_dir.is_dir():
        layouts["folders"] = train_dir
        if train_dir.parent.name == "folders":
            shards = train_dir.parent.parent / train_dir.name
            if (shards / MANIFEST_NAME).is_file():
                layouts["shards"] = shards
    return layouts


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One loader to measure: a label for the table and the overrides that select it."""

    label: str  # "folder", "wds", "dali cpu", "dali mixed"
    backend: str
    decode: str  # dali_decode: "cpu" / "mixed"; "auto" for the others
    directory: Path
    configured: bool

    def overrides(self) -> list[str]:
        """The `section.key=value` arguments that make a run use this loader."""
        chosen = [f"data.backend={self.backend}"]
        if self.backend == "dali":
            chosen.append(f"data.dali_decode={self.decode}")
        return chosen + [f"data.train_dir={self.directory}"]


def dali_importable() -> bool:
    try:
        import nvidia.dali  # noqa: F401  (deferred: optional and slow to import)
    except ImportError:
        return False
    return True


def list_candidates(cfg: Config, dist: DistInfo, layouts: dict[str, Path]) -> list[Candidate]:
    """The configured loader first, then every other backend this data and machine allow."""
    on_gpu = dist.device.startswith("cuda")
    train_dir = (
        cfg.data.train_dir
        if is_remote(cfg.data.train_dir)
        else Path(cfg.data.train_dir).expanduser()
    )
    decode = cfg.data.dali_decode
    if cfg.data.backend == "dali" and decode == "auto":
        decode = "mixed" if on_gpu else "cpu"
    configured_label = "dali " + decode if cfg.data.backend == "dali" else cfg.data.backend
    configured = Candidate(
        configured_label,
        cfg.data.backend,
        decode if cfg.data.backend == "dali" else "auto",
        train_dir,
        True,
    )
    others = []
    if "folders" in layouts:
        others.append(Candidate("folder", "folder", "auto", layouts["folders"], False))
    if "shards" in layouts:
        others.append(Candidate("wds", "wds", "auto", layouts["shards"], False))
    if layouts and dali_importable():
        # DALI reads either form; the configured one is the like-for-like comparison
        dali_dir = train_dir if train_dir in layouts.values() else next(iter(layouts.values()))
        others.append(Candidate("dali cpu", "dali", "cpu", dali_dir, False))
        if on_gpu:
            others.append(Candidate("dali mixed", "dali", "mixed", dali_dir, False))
    same = (configured.backend, configured.decode, configured.directory)
    chosen = [configured]
    for other in others:
        if (other.backend, other.decode, other.directory) == same:
            continue
        if other.label == configured.label:  # the same backend on the data's other form
            layout = "shards" if other.directory == layouts.get("shards") else "folders"
            other = dataclasses.replace(other, label=f"{other.label} ({layout})")
        chosen.append(other)
    return chosen


# -- reading ----------------------------------------------------------------------------------
def drop_from_page_cache(path: str) -> None:
    """Ask the kernel to forget the file's cached pages, so the next read comes from the disk."""
    with contextlib.suppress(OSError, AttributeError):
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def files_to_read(directory: Path, layout: str, dist: DistInfo, budget) -> list[str]:
    """This rank's share: every world_size-th tar, or of a seeded sample of image files."""
    if layout == "shards":
        source = open_manifest(directory, "train", DataConfig())
        paths = [str(source.local_path(shard.name)) for shard in source.manifest.shards]
        mine = paths[dist.rank :: dist.world_size] or paths[dist.rank % len(paths) :][:1]
        return mine
    _, paths, _ = list_class_folders(directory)
    order = np.random.default_rng(0).permutation(len(paths))[: budget.read_files * dist.world_size]
    return [paths[index] for index in order[dist.rank :: dist.world_size]]


def measure_read(paths: list[str], layout: str, budget) -> dict[str, Any]:
    """(bytes, files, seconds) of reading this rank's share (`files_to_read`) cold, within the
    budget."""
    for path in paths:
        drop_from_page_cache(path)
    total = files = 0
    started = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as handle:
            while chunk := handle.read(READ_CHUNK):
                total += len(chunk)
                if (
                    total >= budget.read_bytes
                    or time.perf_counter() - started > budget.read_seconds
                ):
                    break
        files += 1
        if total >= budget.read_bytes or time.perf_counter() - started > budget.read_seconds:
            break
    seconds = max(time.perf_counter() - started, 1e-9)
    return {"layout": layout, "bytes": total, "files": files, "seconds": seconds}


def bytes_per_image(directory: Path, layout: str, read: dict[str, Any]) -> float:
    """Mean bytes read per training image: the manifest's tar bytes over its samples, or the
    sampled files' mean size."""
    if layout == "shards":
        manifest = open_manifest(directory, "train", DataConfig()).manifest
        return sum(shard.bytes for shard in manifest.shards) / max(1, manifest.num_samples)
    return read["bytes"] / max(1, read["files"])


# -- decoding ---------------------------------------------------------------------------------
def batches_forever(loader):
    """The loader's image batches, epoch after epoch."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        empty = True
        for images, _labels in loader:
            empty = False
            yield images
        if empty:
            raise RuntimeError(f"the loader yielded no batch in epoch {epoch}")
        epoch += 1


def measure_decode(cfg: Config, dist: DistInfo, candidate: Candidate, budget) -> dict[str, Any]:
    """images/s of one backend's train loader on this rank, after a warm-up."""
    variant = replace(
        cfg,
        "data",
        backend=candidate.backend,
        train_dir=str(candidate.directory),
        dali_decode=candidate.decode,
    )
    local = dataclasses.replace(dist, backend=None)  # no collectives inside the loader
    loader = build_loader(variant, "train", local, resolve_classes(variant))
    device = dist.torch_device
    batches = batches_forever(loader)
    try:
        for _ in range(budget.decode_warmup_for(cfg.data.num_workers)):
            next(batches)
        synchronize(device)
        images, started, started_cpu = 0, time.perf_counter(), process_tree_cpu_seconds()
        while time.perf_counter() - started < budget.decode_seconds:
            images += next(batches).shape[0]  # uint8 [B, 3, H, W] on the device
        synchronize(device)
        seconds = time.perf_counter() - started
        # this process, its threads (DALI's) and its DataLoader workers
        cpu_ms = 1000 * (process_tree_cpu_seconds() - started_cpu) / max(images, 1)
    finally:
        batches.close()
        del batches, loader
        gc.collect()  # DataLoader workers and DALI pipelines go now, not during the next backend
    return {
        "images_per_s": images / seconds,
        "images": images,
        "seconds": seconds,
        "cpu_ms_per_image": cpu_ms,
    }


def measure_store(cfg: Config, dist: DistInfo, budget) -> dict[str, Any]:
    """A URL's shards: this rank's share streamed from the store (never to disk) within the
    budget, the time to the first byte, and the share the node cache already holds (the hit
    rate a run starting now would see)."""
    source = open_manifest(cfg.data.train_dir, "train", cfg.data)
    shards = source.manifest.shards
    mine = shards[dist.rank :: dist.world_size] or shards[dist.rank % len(shards) :][:1]
    cache = source.cache
    cached = sum(cache.is_complete(entry.name, entry.bytes) for entry in mine) if cache else 0
    total = files = 0
    started = time.perf_counter()
    for entry in mine:
        for block in source.remote.iter_range(entry.name, 0, entry.bytes):
            total += len(block)
            if total >= budget.read_bytes or time.perf_counter() - started > budget.read_seconds:
                break
        files += 1
        if total >= budget.read_bytes or time.perf_counter() - started > budget.read_seconds:
            break
    return {
        "layout": "store",
        "bytes": total,
        "files": files,
        "seconds": max(time.perf_counter() - started, 1e-9),
        "first_byte_s": source.remote.first_byte_s,
        "cache_hit_rate": cached / len(mine) if cache else None,
        "bytes_per_image": sum(e.bytes for e in shards) / max(1, source.manifest.num_samples),
    }


def measure_data(cfg: Config, dist: DistInfo, budget) -> dict[str, Any]:
    """This rank's read and decode measurements (no collectives: each rank at its own pace)."""
    if is_remote(cfg.data.train_dir):
        return measure_remote_data(cfg, dist, budget)
    train_dir = Path(cfg.data.train_dir).expanduser()
    layouts = find_layouts(train_dir) if cfg.data.train_dir else {}
    result: dict[str, Any] = {
        "rank": dist.rank,
        "layouts": {name: str(path) for name, path in layouts.items()},
        "decode": {},
    }
    try:
        split_directory(cfg, "train")  # the loaders' one-line error about data.train_dir
    except UserError as err:
        # nothing to read or decode; the configured loader fails for the same reason
        result["read_error"] = first_line(err)
        configured = list_candidates(cfg, dist, layouts)[0]
        result["decode"][configured.label] = describe_candidate(configured) | {
            "error": first_line(err)
        }
        return result
    try:
        resolve_classes(cfg)
        layout = "shards" if (train_dir / MANIFEST_NAME).is_file() else "folders"
        paths = files_to_read(train_dir, layout, dist, budget)
        read = measure_read(paths, layout, budget)
        read["bytes_per_image"] = bytes_per_image(train_dir, layout, read)
        result["read"] = read
        result["restart_markers"] = sample_restart_markers(paths, layout)
    except Exception as err:  # noqa: BLE001 - reported as the check's one line
        result["read_error"] = describe_error(err)
    for candidate in list_candidates(cfg, dist, layouts):
        result["decode"][candidate.label] = decode_entry(cfg, dist, candidate, budget)
    return result


RESTART_SAMPLE = 32  # train JPEGs whose headers the restart-marker check reads
HEADER_BYTES = 1 << 20  # read of each: a JPEG's markers before its scan (EXIF is < 64 KB)


def sample_restart_markers(paths: list[str], layout: str) -> dict[str, int]:
    """Of up to RESTART_SAMPLE train JPEGs (the first of the files just read, or the first
    shard's first samples), how many were read and how many have a restart marker after every
    MCU (core/jpegfile.py): the files whose crops the ROI decoder cuts out MCU by MCU."""
    headers = list(itertools.islice(jpeg_headers(paths, layout), RESTART_SAMPLE))
    marked = sum(restart_interval(header) == RESTART_INTERVAL for header in headers)
    return {"sampled": len(headers), "marked": marked}


def jpeg_headers(paths: list[str], layout: str):
    """The first HEADER_BYTES of each JPEG in `paths` (image files, or shards' .jpg members)."""
    if layout != "shards":
        for path in paths:
            with open(path, "rb") as file:
                yield file.read(HEADER_BYTES)
        return
    for shard in paths:
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.isfile() and member.name.lower().endswith((".jpg", ".jpeg")):
                    yield tar.extractfile(member).read(HEADER_BYTES)


def decode_entry(cfg: Config, dist: DistInfo, candidate, budget) -> dict[str, Any]:
    """One loader's description and its measured decode, or the error it raised."""
    entry = describe_candidate(candidate)
    try:
        entry.update(measure_decode(cfg, dist, candidate, budget))
    except Exception as err:  # noqa: BLE001 - reported as the check's one line
        entry["error"] = describe_error(err)
    return entry


def measure_remote_data(cfg: Config, dist: DistInfo, budget) -> dict[str, Any]:
    """measure_data for shards at a URL: the store's read, then the configured loader (other
    layouts are not looked for beside a URL)."""
    result: dict[str, Any] = {"rank": dist.rank, "layouts": {}, "decode": {}}
    try:
        result["read"] = measure_store(cfg, dist, budget)
    except Exception as err:  # noqa: BLE001 - reported as the check's one line
        result["read_error"] = describe_error(err)
    configured = list_candidates(cfg, dist, {})[0]
    result["decode"][configured.label] = decode_entry(cfg, dist, configured, budget)
    return result


def describe_candidate(candidate: Candidate) -> dict[str, Any]:
    return {
        "backend": candidate.backend,
        "decode": candidate.decode,
        "directory": str(candidate.directory),
        "configured": candidate.configured,
        "overrides": candidate.overrides(),
    }


def describe_error(err: BaseException) -> str:
    """A one-line description of a measurement that failed: the user error's line, or the type."""
    if isinstance(err, UserError):
        return first_line(err)
    return f"{type(err).__name__}: {first_line(err)}"


# -- judging ----------------------------------------------------------------------------------
def node_read_rates(per_rank: list[dict[str, Any]], ranks_per_node: int) -> list[dict[str, float]]:
    """Per node: bytes/s and files/s summed over its ranks, which read at the same time."""
    nodes = []
    for start in range(0, len(per_rank), ranks_per_node):
        reads = [r["read"] for r in per_rank[start : start + ranks_per_node] if "read" in r]
        if not reads:
            continue
        seconds = max(read["seconds"] for read in reads)
        nodes.append(
            {
                "node": start // ranks_per_node,
                "bytes_per_s": sum(read["bytes"] for read in reads) / seconds,
                "files_per_s": sum(read["files"] for read in reads) / seconds,
            }
        )
    return nodes


def summarize_data(
    cfg: Config, per_rank: list[dict[str, Any]], ranks_per_node: int
) -> tuple[list[Check], dict[str, Any]]:
    """Rank 0's checks, and the numbers the verdict needs."""
    main = per_rank[0]
    summary: dict[str, Any] = {"layouts": main["layouts"], "decode": {}}
    read_check, read_summary = summarize_read(cfg, per_rank, ranks_per_node)
    if read_summary is not None:
        summary["read"] = read_summary
    checks = [read_check, check_roi_decoder(), check_restart_markers(main.get("restart_markers"))]
    for label, entry in main["decode"].items():
        entries = [r["decode"].get(label, {"error": "not measured"}) for r in per_rank]
        decode_check, decode_summary = summarize_decode(cfg, label, entry, entries)
        checks.append(decode_check)
        if decode_summary is not None:
            summary["decode"][label] = decode_summary
    return checks, summary


def summarize_read(
    cfg: Config, per_rank: list[dict[str, Any]], ranks_per_node: int
) -> tuple[Check, dict[str, Any] | None]:
    """The data/read check (the slowest node's cold read), and the verdict's read numbers
    (None when a rank could not read)."""
    read_errors = [(rank, r["read_error"]) for rank, r in enumerate(per_rank) if "read_error" in r]
    if read_errors:
        rank, error = read_errors[0]
        return Check("data", "read", "fail", f"rank {rank}: {error}", {"rank": rank}), None
    nodes = node_read_rates(per_rank, ranks_per_node)
    slowest = min(nodes, key=lambda node: node["bytes_per_s"])
    read = per_rank[0]["read"]
    unit = "files" if read["layout"] == "folders" else "shards"
    summary = {
        "node_bytes_per_s": slowest["bytes_per_s"],
        "bytes_per_image": read["bytes_per_image"],
        "layout": read["layout"],
    }
    values = {
        "layout": read["layout"],
        "directory": scrub(cfg.data.train_dir),
        "nodes": nodes,
        "bytes_per_image": round(read["bytes_per_image"], 1),
        "per_rank": [{k: r["read"][k] for k in ("bytes", "files", "seconds")} for r in per_rank],
    }
    detail = f"cold ({read['layout']}, {read['bytes_per_image'] / 1e3:.0f} kB per image)"
    if read["layout"] == "store":
        values.update({key: read[key] for key in ("first_byte_s", "cache_hit_rate")})
        detail = store_detail(read)
    check = Check(
        "data",
        "read",
        "ok",
        f"{slowest['bytes_per_s'] / MB:.1f} MB/s, {slowest['files_per_s']:.1f} {unit}/s "
        f"per node, {detail}",
        values,
    )
    return check, summary


def store_detail(read: dict[str, Any]) -> str:
    """The store's figures beside its MB/s: time to first byte, the node cache's hit rate."""
    first = read["first_byte_s"]
    hits = read["cache_hit_rate"]
    return (
        f"from the store (first byte {first * 1e3:.0f} ms, "
        if first is not None
        else "from the store ("
    ) + (f"cache hit rate {hits:.0%})" if hits is not None else "no cache: data.cache_gb=0)")


def summarize_decode(
    cfg: Config, label: str, entry: dict[str, Any], entries: list[dict[str, Any]]
) -> tuple[Check, dict[str, Any] | None]:
    """One loader's check from every rank's `entries` (rank 0's is `entry`), and the verdict's
    numbers for it (None when a rank failed: fail for the configured loader, skip for others)."""
    suffix = " (configured)" if entry["configured"] else ""
    values = {k: entry[k] for k in ("backend", "decode", "directory", "configured", "overrides")}
    failed = [(rank, e["error"]) for rank, e in enumerate(entries) if "error" in e]
    if failed:
        rank, error = failed[0]
        status = "fail" if entry["configured"] else "skip"
        return Check("data", label, status, f"rank {rank}: {error}{suffix}", values), None
    rates = [e["images_per_s"] for e in entries]
    slowest = int(np.argmin(rates))
    values |= {
        "images_per_s_per_rank": [round(rate, 1) for rate in rates],
        "slowest_rank": slowest,
    }
    cpu_ms = entries[slowest].get("cpu_ms_per_image")
    values["cpu_ms_per_image_per_rank"] = [
        round(e.get("cpu_ms_per_image", 0.0), 3) for e in entries
    ]
    summary = {
        "images_per_s": rates[slowest],
        "cpu_ms_per_image": cpu_ms,
        "configured": entry["configured"],
        "overrides": entry["overrides"],
    }
    threads = entry["backend"] == "dali" or use_threads(cfg.data, jpeg.AVAILABLE)
    workers = (
        f"{max(1, cfg.data.num_workers)} threads"  # as dali/ and data/threads.py start them
        if threads
        else f"{cfg.data.num_workers} worker processes"
    )
    check = Check(
        "data",
        label,
        "ok",
        f"{rates[slowest]:.0f} images/s per rank (slowest rank {slowest}), {workers}, "
        f"{cpu_ms or 0:.2f} CPU ms per image{suffix}",
        values,
    )
    return check, summary


def check_roi_decoder() -> Check:
    """Whether the folder and wds loaders decode only the crop (pipeline/data/jpeg.py)."""
    if jpeg.AVAILABLE:
        return Check("data", "ROI JPEG decoder", "ok", "built: folder and wds decode only the crop")
    return Check(
        "data",
        "ROI JPEG decoder",
        "warn",
        f"not built ({jpeg.UNAVAILABLE_REASON}): folder and wds decode whole images with Pillow; "
        "`make setup` builds it where libjpeg-dev and a C compiler are installed",
    )


def check_restart_markers(sample: dict[str, int] | None) -> Check:
    """Whether the train JPEGs let the ROI decoder decode only each crop's MCUs: a restart
    marker after every MCU, as `preprocess` writes them (core/jpegfile.py)."""
    name = "JPEG restart markers"
    if not sample or not sample["sampled"]:
        return Check("data", name, "skip", "no local train JPEGs to sample")
    sampled, marked = sample["sampled"], sample["marked"]
    if marked == sampled:
        return Check(
            "data",
            name,
            "ok",
            f"after every MCU in all {sampled} sampled files: folder and wds decode only each "
            "crop's MCUs",
            dict(sample),
        )
    return Check(
        "data",
        name,
        "warn",
        f"{sampled - marked} of {sampled} sampled files lack a restart marker after every MCU: "
        "folder and wds Huffman-decode whole rows of them (~20 % more CPU per train image); "
        "`python -m preprocess prepare` writes them with one",
        dict(sample),
    )


def check_feeding_cores(
    decodes: dict[str, dict[str, Any]], step_images_per_s: float | None
) -> Check:
    """The CPU cores each loader needs to feed the measured step on one rank: its CPU ms per
    image times the step's images/s."""
    if not step_images_per_s:
        return Check("data", "cores to feed the step", "skip", "the step was not measured")
    needs = {
        label: entry["cpu_ms_per_image"] * step_images_per_s / 1000
        for label, entry in decodes.items()
        if entry.get("cpu_ms_per_image")
    }
    if not needs:
        return Check("data", "cores to feed the step", "skip", "no loader was measured")
    listed = ", ".join(f"{label} {cores:.1f}" for label, cores in needs.items())
    return Check(
        "data",
        "cores to feed the step",
        "info",
        f"at the step's {step_images_per_s:.0f} images/s per rank: {listed} cores per rank",
        {"cores_per_rank": {label: round(cores, 2) for label, cores in needs.items()}},
    )
