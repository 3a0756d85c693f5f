"""The doctor's judgements without processes: the verdict's bound and change for given numbers, the
driver and pillow-simd rules, and where the data's other form is found."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.doctor.data import (
    check_feeding_cores,
    check_restart_markers,
    check_roi_decoder,
    find_layouts,
    sample_restart_markers,
)
from pipeline.doctor.environment import check_pillow, check_torch_and_driver
from pipeline.doctor.probes import VEX256
from pipeline.doctor.verdict import Inputs, decide, recommend_comm_hook

REPO = Path(__file__).resolve().parents[2]
ALEXNET = load_config(REPO / "configs/alexnet.yaml")  # wds, batch 256, auto precision


# 8 GPUs on one node, AlexNet at 256 images per step: every rate high unless a test changes it
GPU_NODE = Inputs(
    world_size=8,
    ranks_per_node=8,
    images_per_step=32,
    on_gpu=True,
    dali_importable=True,
    cores_per_rank=12.0,
    compute=5000.0,
    ddp=4800.0,
    decode=9000.0,
    decode_alternatives={
        "wds": {"images_per_s": 9000.0, "configured": True, "overrides": ["data.backend=wds"]}
    },
    configured_decode_label="wds",
    node_read_bytes_per_s=8 * 9000.0 * 110e3 * 2,
    bytes_per_image=110e3,
    layouts={"shards": "/data/train"},
    all_reduce_s=0.001,  # 32 images / 1 ms = 32000 images/s per rank
    inter_node=False,
    precision="bf16",
    peak_memory_gb=30.0,
    device_memory_gb=80.0,
)


def gpu_inputs(**changes) -> Inputs:
    return dataclasses.replace(GPU_NODE, **changes)


def test_a_fast_pipeline_is_compute_bound_and_the_expected_rate_is_world_times_compute():
    verdict, checks = decide(ALEXNET, gpu_inputs())
    assert verdict["bound"] == "compute"
    assert verdict["expected_images_per_s"] == pytest.approx(8 * 5000.0)
    assert verdict["change"]["overrides"] == ["train.compile=true"]  # the next lever on a GPU
    assert [check.name for check in checks] == ["bound", "expected", "change"]
    assert checks[0].status == "ok" and "compute: 5000 images/s per rank" in checks[0].summary


def test_a_slow_cpu_decoder_on_a_gpu_node_is_sent_to_dali_mixed_with_its_measured_rate():
    alternatives = {
        "wds": {"images_per_s": 900.0, "configured": True, "overrides": ["data.backend=wds"]},
        "dali mixed": {
            "images_per_s": 7000.0,
            "configured": False,
            "overrides": ["data.backend=dali", "data.dali_decode=mixed", "data.train_dir=/d"],
        },
    }
    verdict, checks = decide(ALEXNET, gpu_inputs(decode=900.0, decode_alternatives=alternatives))
    assert verdict["bound"] == "decode" and checks[0].status == "warn"
    assert verdict["change"]["overrides"][:2] == ["data.backend=dali", "data.dali_decode=mixed"]
    assert "7000 images/s per rank measured" in verdict["change"]["text"]


def test_decode_bound_on_cpu_with_idle_cores_asks_for_more_workers():
    cfg = dataclasses.replace(ALEXNET, data=dataclasses.replace(ALEXNET.data, num_workers=2))
    inputs = gpu_inputs(on_gpu=False, decode=300.0, cores_per_rank=8.0, precision="fp32")
    verdict, _ = decide(cfg, inputs)
    assert verdict["bound"] == "decode"
    assert verdict["change"]["overrides"] == ["data.num_workers=7"]


def test_a_slow_disk_under_class_folders_is_sent_to_the_shards_next_to_them():
    cfg = dataclasses.replace(ALEXNET, data=dataclasses.replace(ALEXNET.data, backend="folder"))
    inputs = gpu_inputs(
        node_read_bytes_per_s=50e6,  # 50 MB/s / 110 kB / 8 ranks = 57 images/s per rank
        layouts={"folders": "/d/folders/train", "shards": "/d/train"},
    )
    verdict, _ = decide(cfg, inputs)
    assert verdict["bound"] == "disk"
    assert verdict["rates_images_per_s_per_rank"]["disk"] == pytest.approx(56.8, abs=0.1)
    assert verdict["change"]["overrides"] == ["data.backend=wds", "data.train_dir=/d/train"]


def test_a_slow_all_reduce_asks_for_a_larger_global_batch_and_leaves_the_hook_slot_empty():
    inputs = gpu_inputs(all_reduce_s=0.02, inter_node=True)  # 32 images / 20 ms = 1600 per rank
    verdict, _ = decide(ALEXNET, inputs)
    assert verdict["bound"] == "all-reduce"
    assert verdict["rates_images_per_s_per_rank"]["all-reduce"] == pytest.approx(1600.0)
    # compute at 5000 needs about 3.1x the images per all-reduce: a 4x batch, a multiple of 8
    assert verdict["change"]["overrides"] == ["data.global_batch_size=1024"]
    assert "NCCL_SOCKET_IFNAME" in verdict["change"]["text"]
    assert recommend_comm_hook(ALEXNET, inputs) is None and verdict["comm_hook"] is None


def test_an_all_reduce_that_does_not_hide_behind_backward_bounds_at_the_measured_ddp_rate():
    inputs = gpu_inputs(ddp=3000.0)  # 60% of the step alone, though the all-reduce alone is fast
    verdict, checks = decide(ALEXNET, inputs)
    assert verdict["bound"] == "all-reduce"
    assert verdict["rates_images_per_s_per_rank"]["all-reduce"] == pytest.approx(3000.0)
    assert "all-reduce: 3000 images/s per rank" in checks[0].summary


def test_nothing_measured_gives_no_bound():
    inputs = gpu_inputs(compute=None, decode=None, node_read_bytes_per_s=None, all_reduce_s=None)
    verdict, checks = decide(ALEXNET, inputs)
    assert verdict["bound"] is None and checks[0].status == "skip"


def host_facts(**changes) -> dict:
    facts = {
        "torch": "2.13.0+cu130",
        "torch_cuda_build": "13.0",
        "driver_cuda": "13.0",
        "driver_version": "580.95.05",
        "cuda_available": True,
        "gpus_present": "/dev/nvidia0",
        "cpu_flags": ["avx2"],
        "pillow": {"version": "12.1.1.post0", "simd": True, "avx2_build": True},
    }
    facts.update(changes)
    return facts


def test_a_driver_older_than_torchs_cuda_major_fails_and_names_the_driver_it_needs():
    old = host_facts(driver_cuda="12.4", driver_version="550.54", cuda_available=False)
    check = check_torch_and_driver(ALEXNET, old)
    assert check.status == "fail"
    assert "CUDA 13.x (580.65 or newer)" in check.summary and "550.54" in check.summary
    assert check_torch_and_driver(ALEXNET, host_facts()).status == "ok"
    newer_minor = check_torch_and_driver(ALEXNET, host_facts(torch_cuda_build="13.2"))
    assert newer_minor.status == "warn" and "minor-version" in newer_minor.summary


def test_pillow_simd_built_with_avx2_on_a_cpu_without_it_fails_and_plain_pillow_warns():
    cfg = dataclasses.replace(ALEXNET, data=dataclasses.replace(ALEXNET.data, backend="folder"))
    assert check_pillow(cfg, host_facts(cpu_flags=[])).status == "fail"
    plain = host_facts(pillow={"version": "12.1.1", "simd": False, "avx2_build": False})
    assert check_pillow(cfg, plain).status == "warn"
    assert check_pillow(cfg, host_facts()).status == "ok"


def test_the_avx2_scanner_counts_256_bit_vex_instructions_only():
    avx2 = b"\xc5\xfe\x6f\xc1" * 10  # vmovdqu ymm0, ymm1
    sse = b"\xc5\xfa\x6f\xc1" * 10  # vmovdqu xmm0, xmm1 (L bit clear)
    assert len(VEX256.findall(avx2)) == 10 and VEX256.findall(sse) == []


def test_the_other_form_of_the_data_is_found_where_prepare_writes_it(tmp_path):
    shards, folders = tmp_path / "train", tmp_path / "folders" / "train"
    folders.mkdir(parents=True)
    shards.mkdir()
    assert find_layouts(shards) == {"folders": shards}  # no manifest: read as class folders
    assert find_layouts(folders) == {"folders": folders}
    (shards / "manifest.json").write_text("{}")
    assert find_layouts(shards) == {"shards": shards, "folders": folders}
    assert find_layouts(folders) == {"folders": folders, "shards": shards}


ALEXNET_SHAPES = (
    (64, 3, 11, 11), (64,), (192, 64, 5, 5), (192,), (384, 192, 3, 3), (384,),
    (256, 384, 3, 3), (256,), (256, 256, 3, 3), (256,), (4096, 9216), (4096,),
    (4096, 4096), (4096,), (1000, 4096), (1000,),
)  # fmt: skip


def test_an_all_reduce_bound_alexnet_across_nodes_is_sent_to_the_hook_the_scaling_model_picks():
    # 4 nodes x 8 GPUs; the world all-reduce of AlexNet's 244 MB took 200 ms (~19 Gb/s)
    inputs = gpu_inputs(
        world_size=32, all_reduce_s=0.2, inter_node=True, gradient_shapes=ALEXNET_SHAPES
    )
    verdict, _ = decide(ALEXNET, inputs)
    assert verdict["bound"] == "all-reduce"
    hook = verdict["comm_hook"]
    assert hook is not None and hook["overrides"] in (
        ["train.comm_hook=powersgd"],
        ["train.comm_hook=bf16"],
    )
    assert verdict["change"] == hook  # the change to make is the hook, not a bigger batch
    # the same numbers on a CPU say nothing about the GPU constants the model uses
    assert recommend_comm_hook(ALEXNET, dataclasses.replace(inputs, on_gpu=False)) is None
    # an already configured hook is not recommended again
    chosen = hook["overrides"][0].split("=")[1]
    configured = load_config(REPO / "configs/alexnet.yaml", [f"train.comm_hook={chosen}"])
    assert recommend_comm_hook(configured, inputs) is None


def test_the_cores_to_feed_the_step_are_cpu_ms_per_image_times_the_steps_rate():
    decodes = {
        "folder": {"images_per_s": 2000.0, "cpu_ms_per_image": 0.5},
        "dali cpu": {"images_per_s": 1200.0, "cpu_ms_per_image": 1.5},
        "dali mixed": {"images_per_s": 9000.0, "cpu_ms_per_image": None},
    }
    check = check_feeding_cores(decodes, 8000.0)
    assert check.values["cores_per_rank"] == {"folder": 4.0, "dali cpu": 12.0}
    assert "folder 4.0, dali cpu 12.0 cores per rank" in check.summary
    assert check_feeding_cores(decodes, None).status == "skip"


def test_the_roi_decoder_check_says_whether_it_is_built(monkeypatch):
    from pipeline.data import jpeg

    monkeypatch.setattr(jpeg, "AVAILABLE", True)
    assert check_roi_decoder().status == "ok"
    monkeypatch.setattr(jpeg, "AVAILABLE", False)
    monkeypatch.setattr(jpeg, "UNAVAILABLE_REASON", "no libjpeg-dev")
    check = check_roi_decoder()
    assert check.status == "warn" and "no libjpeg-dev" in check.summary


def write_jpeg(path: Path, restart: int) -> tuple[bytes, Path]:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (40, 24), (200, 30, 90)).save(buffer, "JPEG", restart_marker_blocks=restart)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue(), path


def test_the_restart_marker_check_counts_marked_files_in_folders_and_shards(tmp_path):
    """Headers read from the sampled image files (the first 32) and from the shards' JPEG
    members; ok only when every sampled file has a marker after every MCU."""
    import tarfile

    paths = [  # 20 with markers, then 20 without
        str(write_jpeg(tmp_path / f"{index:03d}.JPEG", 1 if index < 20 else 0)[1])
        for index in range(40)
    ]
    sample = sample_restart_markers(paths, "folders")
    assert sample == {"sampled": 32, "marked": 20}, sample
    check = check_restart_markers(sample)
    assert check.status == "warn" and "12 of 32" in check.summary

    shard = tmp_path / "imagenet-train-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for index in range(3):
            data = write_jpeg(tmp_path / "x.jpg", 1)[0]
            for suffix, member in ((".jpg", data), (".cls", b"7")):
                info = tarfile.TarInfo(f"{index:06d}{suffix}")
                info.size = len(member)
                tar.addfile(info, io.BytesIO(member))
    assert sample_restart_markers([str(shard)], "shards") == {"sampled": 3, "marked": 3}
    assert check_restart_markers({"sampled": 3, "marked": 3}).status == "ok"
    assert check_restart_markers({"sampled": 0, "marked": 0}).status == "skip"
    assert check_restart_markers(None).status == "skip"
