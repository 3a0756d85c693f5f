"""`verify`: shards and resized folders against their manifests; exit status, one line per
problem."""

from __future__ import annotations

import json

from imagefixtures import generated_jpeg, make_class_folders

from core.shard_format import read_manifest, shard_name
from preprocess.cli import main
from preprocess.resize import resize_folder
from preprocess.resize_worker import ResizeOptions
from preprocess.shards import write_shards


def make_shards(tmp_path):
    src = tmp_path / "src"
    make_class_folders(src, per_class=4)
    out = tmp_path / "shards"
    write_shards(src, out, "val", shard_size=5, workers=1)
    return out


def test_complete_shards_pass_with_decoding(tmp_path, capsys):
    out = make_shards(tmp_path)
    assert main(["verify", str(out), "--decode", "--workers", "1"]) == 0
    assert capsys.readouterr().out.strip().endswith(": OK")


def test_a_flipped_byte_fails_verification_naming_the_shard(tmp_path, capsys):
    out = make_shards(tmp_path)
    path = out / shard_name("val", 1)
    data = bytearray(path.read_bytes())
    data[700] ^= 0x01
    path.write_bytes(bytes(data))
    assert main(["verify", str(out), "--workers", "1"]) == 1
    output = capsys.readouterr().out
    assert f"{path}: sha256 differs from the manifest" in output
    assert "1 problems" in output


def test_a_missing_shard_fails_verification(tmp_path, capsys):
    out = make_shards(tmp_path)
    (out / shard_name("val", 2)).unlink()
    assert main(["verify", str(out)]) == 1
    assert f"{out / shard_name('val', 2)}: missing" in capsys.readouterr().out


def test_a_label_that_disagrees_with_the_manifest_classes_is_caught(tmp_path, capsys):
    out = make_shards(tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["classes"] = ["n00000001", *manifest["classes"][1:]]  # a shifted class list
    manifest["class_counts"] = {wnid: 4 for wnid in manifest["classes"]}
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(["verify", str(out), "--workers", "1"]) == 1
    assert "but its .json says n01440764" in capsys.readouterr().out


def test_resized_folders_are_checked_against_the_resize_manifest(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_class_folders(src, per_class=3)
    resize_folder(src, dst, ResizeOptions(32), workers=1)
    assert main(["verify", str(dst), "--decode", "--workers", "1"]) == 0
    victim = dst / "n01443537" / "n01443537_1.JPEG"
    victim.write_bytes(b"garbage")
    (dst / "n01484850" / "n01484850_0.JPEG").unlink()
    assert main(["verify", str(dst), "--decode", "--workers", "1"]) == 1
    output = capsys.readouterr().out
    assert f"{victim}: does not decode" in output
    assert "n01484850: 2 images, resize planned 3" in output


def test_verify_without_any_manifest_is_a_clear_user_error(tmp_path, capsys):
    make_class_folders(tmp_path / "plain", per_class=1)
    assert main(["verify", str(tmp_path / "plain")]) == 2
    assert "nothing to verify against" in capsys.readouterr().err


def test_verify_decode_of_shards_flags_a_small_image_when_resize_enlarged_every_image(
    tmp_path, capsys
):
    src, folders, shards = tmp_path / "src", tmp_path / "folders", tmp_path / "shards"
    make_class_folders(src, per_class=2, size=(48, 40))
    assert main(["resize", str(src), str(folders), "--short-side", "32", "--workers", "1"]) == 0
    # an image that did not go through this resize: 20 px where every image has 32
    small = next(folders.glob("*/*.JPEG"))
    small.write_bytes(generated_jpeg(7, (30, 20)))
    assert main(["shard", str(folders), str(shards), "--split", "val", "--workers", "1"]) == 0
    assert read_manifest(shards).only_shrink is False
    capsys.readouterr()
    assert main(["verify", str(shards), "--decode", "--workers", "1"]) == 1
    assert "short side 20, expected 32" in capsys.readouterr().out


def test_verify_of_folders_checks_every_images_sha256_against_the_resize_checksum_lists(
    tmp_path, capsys
):
    src, folders = tmp_path / "src", tmp_path / "folders"
    make_class_folders(src, per_class=2)
    for task in range(2):
        argv = ["resize", str(src), str(folders), "--short-side", "32", "--workers", "1"]
        assert main([*argv, "--task-index", str(task), "--num-tasks", "2"]) == 0
    assert main(["verify", str(folders)]) == 0
    victim = sorted(folders.glob("*/*.JPEG"))[3]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped bit: same size, still ends like a JPEG
    victim.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["verify", str(folders)]) == 1
    assert f"{victim}: sha256 differs" in capsys.readouterr().out
