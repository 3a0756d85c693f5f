"""Raw sources: the three layouts stream the same images; slices are disjoint and complete; bad
tars are refused.

.venv/bin/pytest tests/preprocess/test_sources.py
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from rawfixtures import (
    add_tar_member,
    build_folder_layout,
    build_ilsvrc_tars,
    build_kaggle_layout,
    image_bytes_for,
    write_caffe_val_txt,
    write_kaggle_csv,
)

from core.errors import UserError
from preprocess.sources import detect_layout, iter_raw_images, raw_class_names, raw_classes

BUILDERS = {
    "ilsvrc-tars": build_ilsvrc_tars,
    "kaggle": build_kaggle_layout,
    "folders": build_folder_layout,
}


def listing(directory: Path) -> dict[str, int]:
    return {
        str(path.relative_to(directory)): path.stat().st_size
        for path in sorted(directory.rglob("*"))
    }


def stream(raw: Path, split: str, **kwargs) -> list[tuple[str, str, bytes]]:
    return [
        (image.key, image.wnid, image.read()) for image in iter_raw_images(raw, split, **kwargs)
    ]


def expected(layout, split: str) -> set[tuple[str, str, bytes]]:
    return {
        (key, wnid, layout.images[(split, key)]) for key, wnid in getattr(layout, split).items()
    }


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    return {name: build(root / name, oddballs=True) for name, build in BUILDERS.items()}


@pytest.mark.parametrize("split", ["train", "val"])
def test_all_three_layouts_stream_the_same_keys_classes_and_bytes(layouts, split):
    streams = {name: stream(layout.root, split) for name, layout in layouts.items()}
    reference = expected(layouts["folders"], split)
    assert len(reference) == (18 if split == "train" else 8)
    for name, images in streams.items():
        assert len(images) == len(reference), name
        assert set(images) == reference, name


def test_layouts_are_detected_and_report_their_classes_and_names(layouts):
    for name, layout in layouts.items():
        assert detect_layout(layout.root) == name
        assert raw_classes(layout.root) == layout.classes
        assert raw_class_names(layout.root) == layout.class_names


def test_raw_tars_are_streamed_without_extracting_anything(layouts, tmp_path, monkeypatch):
    layout = layouts["ilsvrc-tars"]
    before = listing(layout.root)
    monkeypatch.chdir(tmp_path)
    images = list(iter_raw_images(layout.root, "train")) + list(iter_raw_images(layout.root, "val"))
    assert all(image.path is None and image.data is not None for image in images)
    assert listing(layout.root) == before
    assert list(tmp_path.iterdir()) == []


def test_the_order_is_deterministic_and_folder_layouts_list_sorted(layouts):
    for layout in layouts.values():
        assert stream(layout.root, "train") == stream(layout.root, "train")
    keys = [key for key, _, _ in stream(layouts["kaggle"].root, "train")]
    assert keys == sorted(keys)


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("num_tasks", [2, 3, 5])
def test_slices_are_disjoint_and_their_union_is_everything(layouts, name, split, num_tasks):
    layout = layouts[name]
    slices = [
        stream(layout.root, split, task_index=task, num_tasks=num_tasks)
        for task in range(num_tasks)
    ]
    keys = [key for images in slices for key, _, _ in images]
    assert len(keys) == len(set(keys)), "an image is in two slices"
    assert set().union(*map(set, slices)) == expected(layout, split)


def test_train_tar_slices_follow_the_per_class_tar_index(layouts):
    layout = layouts["ilsvrc-tars"]
    first = {wnid for _, wnid, _ in stream(layout.root, "train", task_index=0, num_tasks=2)}
    second = {wnid for _, wnid, _ in stream(layout.root, "train", task_index=1, num_tasks=2)}
    assert first == {layout.classes[0], layout.classes[2]}
    assert second == {layout.classes[1], layout.classes[3]}


def test_a_bad_task_index_is_refused(layouts):
    with pytest.raises(UserError, match="task index 3 of 3 tasks"):
        list(iter_raw_images(layouts["folders"].root, "train", task_index=3, num_tasks=3))


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, data in members:
            add_tar_member(archive, name, data)
    return path


def class_tar(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members:
            add_tar_member(archive, name, data)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("where", "member"),
    [
        ("outer", "../n01440764.tar"),
        ("outer", "/abs/n01440764.tar"),
        ("inner", "../../etc/n01440764_1.JPEG"),
        ("inner", "/tmp/n01440764_1.JPEG"),
        ("val", "sub/../../ILSVRC2012_val_00000001.JPEG"),
    ],
)
@pytest.mark.parametrize("num_tasks", [1, 2])
def test_a_tar_member_with_an_absolute_path_or_dot_dot_is_refused_by_name(
    tmp_path, where, member, num_tasks
):
    raw = tmp_path / "raw"
    raw.mkdir()
    good = ("n01440764_1.JPEG", image_bytes_for("train", "n01440764_1"))
    if where == "outer":
        write_tar(raw / "ILSVRC2012_img_train.tar", [(member, class_tar([good]))])
    elif where == "inner":
        write_tar(
            raw / "ILSVRC2012_img_train.tar", [("n01440764.tar", class_tar([good, (member, b"x")]))]
        )
    else:
        write_tar(raw / "ILSVRC2012_img_val.tar", [(member, b"x")])
        write_kaggle_csv(raw / "LOC_val_solution.csv", {"ILSVRC2012_val_00000001": "n01440764"})
    split = "val" if where == "val" else "train"
    with pytest.raises(UserError, match=f"member '{member}' has an absolute path or '..'"):
        list(iter_raw_images(raw, split, task_index=0, num_tasks=num_tasks))
    assert sorted(path.name for path in tmp_path.rglob("*")) == sorted(
        path.name for path in raw.iterdir()
    ) + ["raw"]


def test_links_and_folders_inside_a_tar_are_skipped(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    image = image_bytes_for("val", "ILSVRC2012_val_00000001")
    with tarfile.open(raw / "ILSVRC2012_img_val.tar", "w") as archive:
        folder = tarfile.TarInfo("val")
        folder.type = tarfile.DIRTYPE
        archive.addfile(folder)
        link = tarfile.TarInfo("ILSVRC2012_val_00000002.JPEG")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        archive.addfile(link)
        add_tar_member(archive, "ILSVRC2012_val_00000001.JPEG", image)
    write_kaggle_csv(
        raw / "LOC_val_solution.csv",
        {"ILSVRC2012_val_00000001": "n01440764", "ILSVRC2012_val_00000002": "n01440764"},
    )
    assert stream(raw, "val") == [("ILSVRC2012_val_00000001", "n01440764", image)]


@pytest.mark.parametrize("form", ["kaggle", "caffe"])
def test_tar_val_labels_can_be_passed_in_any_form(tmp_path, form):
    layout = build_ilsvrc_tars(tmp_path / "raw", devkit=False)
    if form == "kaggle":
        labels = write_kaggle_csv(tmp_path / "labels" / "LOC_val_solution.csv", layout.val)
    else:  # no class list beside it: the classes come from the train tar
        labels = write_caffe_val_txt(tmp_path / "labels" / "val.txt", layout.val, layout.classes)
    assert set(stream(layout.root, "val", labels=labels)) == expected(layout, "val")


def test_tar_val_without_labels_names_what_was_looked_for(tmp_path):
    layout = build_ilsvrc_tars(tmp_path / "raw", devkit=False)
    with pytest.raises(
        UserError, match="no val labels in .*ILSVRC2012_devkit_t12.tar.gz.*--labels"
    ):
        list(iter_raw_images(layout.root, "val"))


def test_a_val_tar_member_without_a_label_is_refused(tmp_path):
    layout = build_ilsvrc_tars(tmp_path / "raw", devkit=False)
    partial = dict(sorted(layout.val.items())[1:])
    labels = write_kaggle_csv(tmp_path / "LOC_val_solution.csv", partial)
    with pytest.raises(UserError, match="ILSVRC2012_val_00000001.JPEG has no val label"):
        list(iter_raw_images(layout.root, "val", labels=labels))


def test_a_flat_folder_val_takes_its_labels_from_the_csv_beside_it(tmp_path):
    layout = build_folder_layout(tmp_path / "raw", val_sorted=False)
    assert not any(path.is_dir() for path in (layout.root / "val").iterdir())
    assert set(stream(layout.root, "val")) == expected(layout, "val")


def test_a_half_sorted_val_folder_mixes_class_folders_and_labels(tmp_path):
    layout = build_folder_layout(tmp_path / "raw", val_sorted=False)
    first = min(layout.val)
    (layout.root / "val" / layout.val[first]).mkdir()
    (layout.root / "val" / f"{first}.JPEG").rename(
        layout.root / "val" / layout.val[first] / f"{first}.JPEG"
    )
    assert set(stream(layout.root, "val")) == expected(layout, "val")


def test_two_files_with_the_same_key_are_refused(tmp_path):
    layout = build_folder_layout(tmp_path / "raw")
    key, wnid = next(iter(layout.train.items()))
    other = next(w for w in layout.classes if w != wnid)
    (layout.root / "train" / other / f"{key}.jpg").write_bytes(b"x")
    with pytest.raises(UserError, match=f"two files share the key '{key}'"):
        list(iter_raw_images(layout.root, "train"))


def test_an_unrecognised_layout_names_what_was_looked_for(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(
        UserError, match=r"ILSVRC2012_img_train.tar.*ILSVRC/Data/CLS-LOC.*train/ or val/"
    ):
        detect_layout(tmp_path)
    with pytest.raises(UserError, match="not a directory"):
        detect_layout(tmp_path / "missing")


def test_a_missing_split_is_named(tmp_path):
    layout = build_ilsvrc_tars(tmp_path / "raw")
    (layout.root / "ILSVRC2012_img_train.tar").unlink()
    with pytest.raises(UserError, match="no ILSVRC2012_img_train.tar"):
        list(iter_raw_images(layout.root, "train"))
    # without a train tar the classes come from the devkit's meta.mat, sorted
    assert raw_classes(layout.root) == layout.classes
    assert raw_class_names(layout.root) == layout.class_names


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("num_tasks", [1, 2])
@pytest.mark.parametrize("cut", ["inside-data", "at-a-header", "inside-a-header"])
def test_a_truncated_tar_is_one_clear_error(tmp_path, split, num_tasks, cut):
    layout = build_ilsvrc_tars(tmp_path / "raw")
    tar_path = layout.root / (
        "ILSVRC2012_img_train.tar" if split == "train" else "ILSVRC2012_img_val.tar"
    )
    with tarfile.open(tar_path) as archive:
        members = archive.getmembers()
    last = members[-1]
    # tarfile itself stops silently at a header cut short: a download cut between members looks
    # whole
    length = {
        "inside-data": last.offset_data + last.size // 2,
        "at-a-header": last.offset,
        "inside-a-header": last.offset + 100,
    }[cut]
    tar_path.write_bytes(tar_path.read_bytes()[:length])
    with pytest.raises(UserError, match="truncated"):
        for task in range(num_tasks):
            list(iter_raw_images(layout.root, split, task_index=task, num_tasks=num_tasks))
