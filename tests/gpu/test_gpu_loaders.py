"""Loaders on a GPU: DALI's nvJPEG (`mixed`) against its CPU decoder on the same shards, and a
steady-state loader → optimizer-step loop that never makes the host wait for the GPU."""

from __future__ import annotations

import pytest
import torch
from gpu_fixtures import gpu_config

from pipeline.config import replace
from pipeline.data import build_loader
from pipeline.distributed import DistInfo
from pipeline.models import create_model
from pipeline.optim import LearningRateSchedule
from pipeline.precision import build_precision, configure_device, has_native_bf16
from pipeline.tracking import NullTracker
from pipeline.train.meters import TrainMeter
from pipeline.train.step import build_model_views, build_optimizer_step

pytestmark = pytest.mark.gpu

GPU = DistInfo(device="cuda:0")
# nvJPEG and libjpeg-turbo both meet the JPEG standard's IDCT accuracy, but round and upsample
# chroma differently, and the resize then runs on different hardware: a few levels apart at edges,
# about one level on average. A wrong crop, flip or channel order moves the mean by tens.
MEAN_ABS_LEVELS = 2.0  # mean |mixed - cpu| over every pixel and channel, of 255
WITHIN_8_LEVELS = 0.99  # fraction of values that differ by at most 8 levels


def load_val(cfg, decode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every val batch of the shards through DALI with `decode`, concatenated on the GPU."""
    variant = replace(cfg, "data", backend="dali", dali_decode=decode)
    loader = build_loader(variant, "val", GPU)
    images, labels = zip(*loader)
    return torch.cat(images), torch.cat(labels)


def test_dali_mixed_and_cpu_decode_the_same_val_pixels_within_tolerance_and_equal_labels(
    gpu_data, tmp_path
):
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed")
    cfg = gpu_config(
        gpu_data,
        tmp_path / "run",
        f"data.train_dir={gpu_data / 'train'}",
        f"data.val_dir={gpu_data / 'val'}",
        "data.num_workers=2",
    )
    mixed_images, mixed_labels = load_val(cfg, "mixed")
    cpu_images, cpu_labels = load_val(cfg, "cpu")
    assert mixed_images.is_cuda and cpu_images.is_cuda  # both handed over on the device
    assert mixed_images.shape == cpu_images.shape == (20, 3, 64, 64)
    assert torch.equal(mixed_labels, cpu_labels)
    assert sorted(mixed_labels.tolist()) == sorted([0, 1, 2, 3] * 5)
    difference = (mixed_images.float() - cpu_images.float()).abs()
    assert difference.mean().item() <= MEAN_ABS_LEVELS, difference.mean().item()
    assert (difference <= 8).float().mean().item() >= WITHIN_8_LEVELS


@pytest.mark.parametrize("backend", ["folder", "wds", "dali-mixed"])
def test_a_steady_state_loader_to_step_loop_makes_no_host_sync(backend, gpu_data, tmp_path):
    """torch.cuda.set_sync_debug_mode("error") raises on any call that makes the host wait for
    the GPU (a pageable copy, .item(), a synchronize): none may happen per batch once the loop
    is warm. bf16 (or fp32): the fp16 GradScaler reads its inf check on the host by design."""
    if backend.startswith("dali"):
        pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed")
    if backend == "wds":
        pytest.importorskip("webdataset", reason="webdataset is not installed")
    layout = "folders" if backend == "folder" else "shards"
    train_dir = gpu_data / "folders" / "train" if layout == "folders" else gpu_data / "train"
    data_backend, decode = (backend.split("-") + ["auto"])[:2]
    cfg = gpu_config(
        gpu_data,
        tmp_path / "run",
        f"data.backend={data_backend}",
        f"data.dali_decode={decode}",
        f"data.train_dir={train_dir}",
        f"data.val_dir={train_dir}",
        "data.num_workers=2",
        "train.channels_last=true",
        f"train.precision={'bf16' if has_native_bf16() else 'fp32'}",
        "train.log_every=1000000",  # the meter's logging step syncs; it never comes here
    )
    device = GPU.torch_device
    configure_device(device)
    loader = build_loader(cfg, "train", GPU)
    model = create_model(cfg, 4, device)
    meter = TrainMeter(GPU, NullTracker(), cfg.train.log_every)
    take_step = build_optimizer_step(
        cfg,
        GPU,
        build_model_views(cfg, GPU, model, ddp=False),
        build_precision(cfg.train.precision, device),
        schedule=LearningRateSchedule(cfg, len(loader), 10 * len(loader)),
        meter=meter,
    )
    loader.set_epoch(0)
    batches = meter.log_every(loader)  # the trainer's own wrapper
    warm, steady = 3, 5
    assert len(loader) >= warm + steady
    for step in range(warm):  # cuDNN autotuning, allocator growth, the normalize constants
        take_step(batches, step)
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(warm, warm + steady):
            take_step(batches, step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize(device)
    assert meter.samples == (warm + steady) * loader.batch_size
