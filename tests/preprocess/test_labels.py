"""Val labels in every published form give the same mapping; devkit IDs go through meta.mat.

.venv/bin/pytest tests/preprocess/test_labels.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from rawfixtures import (
    DEFAULT_WNIDS,
    REAL_CAFFE_VAL,
    REAL_KAGGLE_VAL,
    REAL_SYNSET_MAPPING,
    plan_val,
    shuffled_ids,
    write_caffe_val_txt,
    write_devkit_dir,
    write_devkit_tar,
    write_kaggle_csv,
    write_meta_mat,
    write_synset_mapping,
)

from core.classes import find_class_names, folder_classes, read_synset_mapping
from core.errors import UserError
from preprocess.devkit import devkit_meta
from preprocess.labels import (
    detect_label_format,
    devkit_class_names,
    load_val_labels,
)

VAL = plan_val(DEFAULT_WNIDS, per_class=3)  # stem → WNID, 12 files, classes interleaved
EXPECTED = {f"{stem}.JPEG": wnid for stem, wnid in VAL.items()}


def write_form(directory: Path, form: str) -> object:
    """Write VAL in `form`; return what a user would pass as the label source."""
    if form == "devkit-tar":
        path = directory / "ILSVRC2012_devkit_t12.tar.gz"
        write_devkit_tar(path, VAL, DEFAULT_WNIDS)
        return path
    if form == "devkit-dir":
        write_devkit_dir(directory / "ILSVRC2012_devkit_t12", VAL, DEFAULT_WNIDS)
        return directory / "ILSVRC2012_devkit_t12"
    if form == "devkit-two-files":
        write_devkit_dir(directory / "devkit", VAL, DEFAULT_WNIDS)
        data = directory / "devkit" / "data"
        return [data / "ILSVRC2012_validation_ground_truth.txt", data / "meta.mat"]
    if form == "devkit-ground-truth-beside-meta":
        write_devkit_dir(directory / "devkit", VAL, DEFAULT_WNIDS)
        return directory / "devkit" / "data" / "ILSVRC2012_validation_ground_truth.txt"
    if form == "devkit-meta-mat":
        write_devkit_dir(directory / "devkit", VAL, DEFAULT_WNIDS)
        return directory / "devkit" / "data" / "meta.mat"
    if form == "kaggle-with-boxes":
        return write_kaggle_csv(directory / "LOC_val_solution.csv", VAL, box_coordinates=True)
    if form == "kaggle-plain":
        return write_kaggle_csv(directory / "LOC_val_solution.csv", VAL, box_coordinates=False)
    if form == "caffe-mapping-beside":
        write_synset_mapping(directory / "LOC_synset_mapping.txt", DEFAULT_WNIDS)
        return write_caffe_val_txt(directory / "val.txt", VAL, DEFAULT_WNIDS)
    if form == "caffe-mapping-in-parent":
        write_synset_mapping(directory / "LOC_synset_mapping.txt", DEFAULT_WNIDS)
        return write_caffe_val_txt(directory / "labels" / "val.txt", VAL, DEFAULT_WNIDS)
    raise AssertionError(form)


FORMS = [
    "devkit-tar",
    "devkit-dir",
    "devkit-two-files",
    "devkit-ground-truth-beside-meta",
    "devkit-meta-mat",
    "kaggle-with-boxes",
    "kaggle-plain",
    "caffe-mapping-beside",
    "caffe-mapping-in-parent",
]


@pytest.mark.parametrize("form", FORMS)
def test_every_label_format_gives_the_same_file_to_wnid_mapping(tmp_path, form):
    source = write_form(tmp_path, form)
    assert load_val_labels(source) == EXPECTED


def test_caffe_val_txt_uses_a_class_list_passed_in(tmp_path):
    path = write_caffe_val_txt(tmp_path / "val.txt", VAL, DEFAULT_WNIDS)
    # given in any order: indices are into the *sorted* WNIDs
    assert load_val_labels(path, classes=list(reversed(DEFAULT_WNIDS))) == EXPECTED


def test_devkit_ids_are_translated_through_meta_mat_not_used_as_sorted_indices(tmp_path):
    ids = shuffled_ids(DEFAULT_WNIDS)
    assert sorted(ids, key=ids.__getitem__) != sorted(ids), (
        "fixture meta.mat ID order must not be the sorted WNID order"
    )
    path = write_form(tmp_path, "devkit-tar")
    ground_truth = [ids[VAL[stem]] for stem in sorted(VAL)]
    # the classic bug: ILSVRC2012_ID - 1 taken as the sorted-WNID index
    naive = {
        f"{stem}.JPEG": sorted(DEFAULT_WNIDS)[synset_id - 1]
        for stem, synset_id in zip(sorted(VAL), ground_truth)
    }
    assert naive != EXPECTED
    assert load_val_labels(path) == EXPECTED


def test_real_kaggle_and_caffe_labels_agree_on_all_50000_files(tmp_path):
    caffe = tmp_path / "val.txt"
    shutil.copy(REAL_CAFFE_VAL, caffe)
    shutil.copy(REAL_SYNSET_MAPPING, tmp_path / "LOC_synset_mapping.txt")
    kaggle_labels = load_val_labels(REAL_KAGGLE_VAL)
    caffe_labels = load_val_labels(caffe)
    assert len(kaggle_labels) == 50_000
    assert kaggle_labels == caffe_labels
    # the well-known first val image is a snake (n01751748, sea snake), class 65
    assert kaggle_labels["ILSVRC2012_val_00000001.JPEG"] == "n01751748"
    counts: dict[str, int] = {}
    for wnid in kaggle_labels.values():
        counts[wnid] = counts.get(wnid, 0) + 1
    assert len(counts) == 1000 and set(counts.values()) == {50}


def test_kaggle_label_is_the_first_wnid_of_the_prediction_string(tmp_path):
    path = tmp_path / "LOC_val_solution.csv"
    path.write_text(
        "ImageId,PredictionString\n"
        "ILSVRC2012_val_00000001,n01751748 160 231 300 400 n09999999 1 2 3 4 \n"
        "ILSVRC2012_val_00000002,n09193705 1 2 3 4\n"
    )
    assert load_val_labels(path) == {
        "ILSVRC2012_val_00000001.JPEG": "n01751748",
        "ILSVRC2012_val_00000002.JPEG": "n09193705",
    }


def test_val_files_select_the_given_names_with_any_extension(tmp_path):
    path = write_form(tmp_path, "kaggle-plain")
    names = ["ILSVRC2012_val_00000002.jpg", "ILSVRC2012_val_00000005.JPEG", "unrelated.JPEG"]
    assert load_val_labels(path, names) == {
        "ILSVRC2012_val_00000002.jpg": VAL["ILSVRC2012_val_00000002"],
        "ILSVRC2012_val_00000005.JPEG": VAL["ILSVRC2012_val_00000005"],
    }


@pytest.mark.parametrize(
    ("form", "detected"),
    [
        ("devkit-tar", "devkit-tar"),
        ("devkit-dir", "devkit-dir"),
        ("kaggle-plain", "kaggle"),
        ("caffe-mapping-beside", "caffe"),
    ],
)
def test_the_format_is_detected_without_being_told(tmp_path, form, detected):
    assert detect_label_format(write_form(tmp_path, form))[0] == detected


def test_a_caffe_val_txt_without_a_class_list_is_one_clear_error(tmp_path):
    path = write_caffe_val_txt(tmp_path / "val.txt", VAL, DEFAULT_WNIDS)
    with pytest.raises(UserError, match="class list.*LOC_synset_mapping.txt"):
        load_val_labels(path)


def test_a_caffe_index_beyond_the_class_list_is_refused(tmp_path):
    path = write_caffe_val_txt(tmp_path / "val.txt", VAL, DEFAULT_WNIDS)
    with pytest.raises(UserError, match="class index 3 but the class list has 2"):
        load_val_labels(path, classes=DEFAULT_WNIDS[:2])


def test_a_devkit_ground_truth_without_meta_mat_is_refused(tmp_path):
    path = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    path.write_text("3\n1\n")
    with pytest.raises(UserError, match="no meta.mat beside it"):
        load_val_labels(path)


def test_a_ground_truth_id_that_meta_mat_lacks_is_refused(tmp_path):
    write_devkit_dir(tmp_path, VAL, DEFAULT_WNIDS)
    (tmp_path / "data" / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n999\n")
    with pytest.raises(UserError, match="line 2 has ILSVRC2012_ID 999"):
        load_val_labels(tmp_path)


def test_an_unknown_label_file_is_one_error_naming_it_and_the_accepted_forms(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text('{"a": 1}\n')
    with pytest.raises(UserError, match=r"labels\.json.*devkit.*Kaggle.*caffe"):
        load_val_labels(path)
    with pytest.raises(UserError, match="does not exist"):
        load_val_labels(tmp_path / "missing.csv")
    with pytest.raises(UserError, match="folder without val labels"):
        load_val_labels(tmp_path)


def test_devkit_meta_lists_only_leaf_synsets_in_meta_mat_order(tmp_path):
    _, ids = write_meta_mat(tmp_path / "meta.mat", DEFAULT_WNIDS)
    leaves = devkit_meta(tmp_path / "meta.mat")
    assert [(synset_id, wnid) for synset_id, wnid, _ in leaves] == sorted(
        (i, w) for w, i in ids.items()
    )
    assert [wnid for _, wnid, _ in leaves] != sorted(DEFAULT_WNIDS)
    assert "n00001740" not in {wnid for _, wnid, _ in leaves}  # the non-leaf root
    names = devkit_class_names(tmp_path / "meta.mat")
    assert list(names) == sorted(DEFAULT_WNIDS)
    assert names == {wnid: read_synset_mapping(REAL_SYNSET_MAPPING)[wnid] for wnid in DEFAULT_WNIDS}


def test_synset_mapping_is_read_in_file_order_and_found_up_to_two_parents(tmp_path):
    mapping = read_synset_mapping(REAL_SYNSET_MAPPING)
    assert len(mapping) == 1000
    assert next(iter(mapping.items())) == ("n01440764", "tench, Tinca tinca")
    write_synset_mapping(tmp_path / "LOC_synset_mapping.txt", DEFAULT_WNIDS)
    deep = tmp_path / "folders" / "train"
    deep.mkdir(parents=True)
    assert list(find_class_names(deep)) == sorted(DEFAULT_WNIDS)
    too_deep = deep / "n01440764" / "nested"  # the mapping is 4 levels up: not looked for
    too_deep.mkdir(parents=True)
    assert find_class_names(too_deep) == {}


def test_a_malformed_synset_mapping_line_is_named(tmp_path):
    path = tmp_path / "LOC_synset_mapping.txt"
    path.write_text("n01440764 tench\nbanana split\n")
    with pytest.raises(UserError, match=r":2: expected 'nXXXXXXXX words'"):
        read_synset_mapping(path)


def test_folder_classes_are_sorted_and_skip_hidden_folders_and_files(tmp_path):
    for name in ("n02000000", "n01000000", ".partial", "n03000000"):
        (tmp_path / name).mkdir()
    (tmp_path / "n04000000.txt").write_text("not a folder")
    assert folder_classes(tmp_path) == ["n01000000", "n02000000", "n03000000"]
