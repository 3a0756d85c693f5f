"""The folder backend's file list: one blob + offsets, so forked workers never copy it."""

from __future__ import annotations

import os

import numpy as np
import pytest
from loaderfixtures import single_rank, tiny_config

from pipeline.data import build_loader
from pipeline.data.files import PathTable, list_class_folders


def test_path_table_returns_every_path_including_non_utf8_names():
    paths = ["/data/n01440764/a.JPEG", "/data/ü/ß.jpeg", os.fsdecode(b"/data/\xff\xfe.jpg"), ""]
    table = PathTable(paths)
    assert len(table) == 4
    assert [table[index] for index in range(4)] == paths == list(table)
    assert table[-1] == "" and table[-4] == paths[0]
    with pytest.raises(IndexError):
        table[4]


def test_the_folder_loaders_file_list_is_two_buffers_not_one_python_string_per_file(tiny_folders):
    loader = build_loader(
        tiny_config(tiny_folders["train"], tiny_folders["val"]), "train", single_rank()
    )
    table = loader.dataset.paths
    assert isinstance(table, PathTable)
    # reading a path must not touch per-file Python objects (their refcounts dirty forked pages)
    assert {type(value) for value in vars(table).values()} == {bytes, np.ndarray}
    _, paths, _ = list_class_folders(tiny_folders["train"])
    assert list(table) == paths


@pytest.mark.parametrize("layout", ["tiny_folders", "tiny_shards"])
def test_a_dropped_loader_and_its_persistent_workers_go_at_once_without_the_garbage_collector(
    request, layout
):
    import gc
    import weakref

    data = request.getfixturevalue(layout)
    backend = "folder" if layout == "tiny_folders" else "wds"
    loader = build_loader(
        tiny_config(
            data["train"], data["val"], backend=backend, num_workers=2, worker_kind="processes"
        ),
        "train",
        single_rank(),
    )
    loader.set_epoch(0)
    assert len(list(loader)) == len(loader)
    workers = list(loader.dataloader._iterator._workers)  # persistent: alive between epochs
    assert workers and all(worker.is_alive() for worker in workers)
    reference = weakref.ref(loader)
    gc.disable()
    try:
        del loader
        assert reference() is None, "a reference cycle keeps the dropped loader alive"
    finally:
        gc.enable()
    for worker in workers:
        worker.join(timeout=30)
    assert not any(worker.is_alive() for worker in workers)


def test_the_folder_backend_lists_every_suffix_preprocessing_reads_gif_included(tmp_path):
    from core.imagefiles import IMAGE_SUFFIXES

    folder = tmp_path / "train" / "n01440764"
    folder.mkdir(parents=True)
    for number, suffix in enumerate(
        sorted(IMAGE_SUFFIXES)
    ):  # listing does not decode: names are enough
        (folder / f"image_{number}{suffix.upper() if number % 2 else suffix}").write_bytes(
            b"pixels"
        )
    (folder / "notes.txt").write_text("not an image")
    _, paths, _ = list_class_folders(tmp_path / "train")
    assert ".gif" in IMAGE_SUFFIXES
    assert sorted(os.path.splitext(path)[1].lower() for path in paths) == sorted(IMAGE_SUFFIXES)


@pytest.mark.parametrize("layout", ["tiny_folders", "tiny_shards"])
def test_loader_threads_end_with_their_pass_even_one_stopped_early_and_a_dropped_loader_goes(
    request, layout
):
    import gc
    import threading
    import weakref

    def loader_threads() -> list[threading.Thread]:
        return [thread for thread in threading.enumerate() if "-worker-" in thread.name]

    data = request.getfixturevalue(layout)
    backend = "folder" if layout == "tiny_folders" else "wds"
    cfg = tiny_config(data["train"], data["val"], backend=backend, num_workers=2)
    loader = build_loader(cfg, "train", single_rank())
    assert loader.workers.threads  # auto: the ROI decoder is built here and auto_augment is none
    loader.set_epoch(0)
    batches = iter(loader)
    next(batches)
    assert len(loader_threads()) == 2  # running ahead of the loop
    batches.close()  # the loop stops early: a benchmark's time limit, max_steps
    assert loader_threads() == []
    assert len(list(loader)) == len(loader)
    assert loader_threads() == []
    reference = weakref.ref(loader)
    gc.disable()
    try:
        del loader, batches
        assert reference() is None, "a reference cycle keeps the dropped loader alive"
    finally:
        gc.enable()
