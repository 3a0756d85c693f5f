"""The real trainer on one GPU inside a one-rank nccl process group (so DDP and every collective
run as on a multi-GPU node): bf16 and fp16 + GradScaler with channels_last and torch.compile, and
a resume that ends bit-identical to the uninterrupted run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from gpu_fixtures import gpu_config

from pipeline.checkpoint import load_checkpoint
from pipeline.precision import has_native_bf16
from pipeline.train.trainer import Trainer

pytestmark = pytest.mark.gpu

STEPS_PER_EPOCH = 10  # 160 train images at the tiny config's global batch of 16


def metrics_rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_ddp_steps_on_one_gpu_in_mixed_precision_with_channels_last_and_compile(
    precision, gpu_data, nccl_world_of_one, tmp_path
):
    if precision == "bf16" and not has_native_bf16():
        pytest.skip("this GPU has no native bf16 (needs sm80 or newer)")
    run_dir = tmp_path / "run"
    cfg = gpu_config(
        gpu_data,
        run_dir,
        f"train.precision={precision}",
        "train.channels_last=true",
        "train.compile=true",
        "train.max_steps=6",
        "train.log_every=1",
    )
    trainer = Trainer(cfg, nccl_world_of_one, [])
    assert trainer.model_views.ddp is not None and trainer.precision.name == precision
    assert trainer.precision.scaler.is_enabled() == (precision == "fp16")
    first = next(trainer.model.parameters())
    assert first.is_cuda and first.is_contiguous(memory_format=torch.channels_last)
    initial = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    assert trainer.train() == 0

    rows = [row for row in metrics_rows(run_dir) if "train/loss" in row]
    assert [row["step"] for row in rows] == list(range(1, 7))
    assert all(math.isfinite(row["train/loss"]) for row in rows)
    assert all(row["perf/images_per_s"] > 0 and row["perf/gpu_mem_gb"] > 0 for row in rows)
    if precision == "fp16":
        assert all(row["opt/loss_scale"] > 0 for row in rows)
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")  # CPU tensors only
    assert state["step"] == 6
    assert (state["scaler"] is not None) == (precision == "fp16")
    if precision == "fp16":
        assert state["scaler"]["scale"] > 0
    for name, value in state["optimizer"]["state"][0].items():
        assert not isinstance(value, torch.Tensor) or value.device.type == "cpu", name
    changed = [k for k, v in state["model"].items() if not torch.equal(v, initial[k].cpu())]
    assert changed, "six optimizer steps left every weight unchanged"
    assert all(v.dtype == torch.float32 for v in state["model"].values())  # autocast, not .half()


def test_a_resume_on_gpu_ends_bit_identical_to_the_uninterrupted_run(
    gpu_data, nccl_world_of_one, tmp_path
):
    """Stop after 7 of 20 steps (inside epoch 0), resume from last.pt, and compare with one
    uninterrupted run: every weight and optimizer buffer equal, bit for bit.

    224 px crops, so AlexNet's adaptive pool maps 6x6 to 6x6 (no atomic accumulation in its
    backward); deterministic algorithms for these runs; a fixed cuBLAS workspace (conftest)."""
    recipe = (
        "train.precision=bf16" if has_native_bf16() else "train.precision=fp16",
        "train.channels_last=true",
        "train.epochs=2",
        "data.train_crop=224",
        "data.val_resize=256",
        "data.val_crop=224",
        "train.log_every=1",
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    try:
        reference_dir = tmp_path / "reference"
        reference = Trainer(gpu_config(gpu_data, reference_dir, *recipe), nccl_world_of_one, [])
        assert reference.train() == 0

        run_dir = tmp_path / "resumed"
        stopped = Trainer(
            gpu_config(gpu_data, run_dir, *recipe, "train.max_steps=7"), nccl_world_of_one, []
        )
        assert stopped.train() == 0
        middle = load_checkpoint(run_dir / "checkpoints" / "last.pt")
        assert middle["step"] == 7 and middle["epoch"] == 0 and middle["batch_in_epoch"] == 7

        resumed = Trainer(gpu_config(gpu_data, run_dir, *recipe), nccl_world_of_one, [])
        assert resumed.resume_from == run_dir / "checkpoints" / "last.pt"
        assert resumed.train() == 0
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False

    expected = load_checkpoint(reference_dir / "checkpoints" / "last.pt")
    actual = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert actual["step"] == expected["step"] == 2 * STEPS_PER_EPOCH
    for key, value in expected["model"].items():
        assert torch.equal(actual["model"][key], value), key
    for index, buffers in expected["optimizer"]["state"].items():
        for name, value in buffers.items():
            assert torch.equal(actual["optimizer"]["state"][index][name], value), (index, name)
