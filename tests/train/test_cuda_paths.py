"""The CUDA paths' decisions, shown on the CPU: device selection, per-tensor copies, precision,
cuDNN autotuning, CPU-only checkpoints, eval with rank 0's BatchNorm statistics, and the
confusion matrix without host syncs. The GPU side of each is in tests/gpu/."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from train_helpers import tiny_args, torchrun

from pipeline import precision
from pipeline.checkpoint import load_checkpoint, to_cpu
from pipeline.data.base import copy_mode
from pipeline.distributed import CudaProbe, select_device
from pipeline.errors import ConfigError, UserError
from pipeline.metrics import EvalAccumulator
from pipeline.train.cli import main

CPU, GPU = torch.device("cpu"), torch.device("cuda:0")
NO_CUDA = CudaProbe(available=False, device_count=0, gpus_present="", torch_warning="")
BROKEN = CudaProbe(
    available=False,
    device_count=0,
    gpus_present="/dev/nvidia0 and 7 more",
    torch_warning="CUDA initialization: The NVIDIA driver on your system is too old",
)


def gpus(count: int) -> CudaProbe:
    return CudaProbe(
        available=True, device_count=count, gpus_present="/dev/nvidia0", torch_warning=""
    )


def test_auto_on_a_node_with_gpus_but_no_working_cuda_is_one_line_quoting_torch_not_a_cpu_run():
    with pytest.raises(UserError) as raised:
        select_device("auto", local_rank=0, local_world_size=8, probe=BROKEN)
    message = str(raised.value)
    assert "\n" not in message and "/dev/nvidia0" in message
    assert "driver on your system is too old" in message and "train.device=cpu" in message


def test_auto_without_any_gpu_trains_on_the_cpu_and_cpu_is_always_honoured():
    assert select_device("auto", 0, 1, NO_CUDA) == "cpu"
    assert select_device("cpu", 3, 8, gpus(8)) == "cpu"
    with pytest.raises(UserError, match="train.device=cuda but CUDA cannot start"):
        select_device("cuda", 0, 1, NO_CUDA)


def test_each_local_rank_takes_its_own_gpu_and_more_ranks_than_gpus_is_an_error():
    assert [select_device("auto", rank, 4, gpus(4)) for rank in range(4)] == [
        "cuda:0",
        "cuda:1",
        "cuda:2",
        "cuda:3",
    ]
    with pytest.raises(UserError, match="local rank 2 needs GPU 2 but this process sees 2 GPU"):
        select_device("cuda", 2, 4, gpus(2))  # once this was cuda:0: two ranks on one GPU


def test_a_task_bound_to_one_gpu_takes_it_whatever_its_local_rank():
    assert select_device("auto", 5, 8, gpus(1)) == "cuda:0"  # srun --gpus-per-task=1


def test_the_probe_quotes_torchs_own_warning_and_names_what_shows_gpus(monkeypatch, tmp_path):
    def failing_is_available():
        warnings.warn("CUDA initialization: The NVIDIA driver on your system is too old (12020)")
        return False

    monkeypatch.setattr(torch.cuda, "is_available", failing_is_available)
    (tmp_path / "nvidia0").touch()
    (tmp_path / "nvidiactl").touch()  # not a GPU
    probe = CudaProbe.read(env={}, dev=tmp_path)
    assert probe == CudaProbe(
        False, 0, f"{tmp_path / 'nvidia0'}", probe.torch_warning
    ) and probe.torch_warning.startswith("CUDA initialization: The NVIDIA driver")
    shown = CudaProbe.read(env={"CUDA_VISIBLE_DEVICES": "0,1"}, dev=tmp_path / "none")
    assert shown.gpus_present == "CUDA_VISIBLE_DEVICES=0,1"
    assert (
        CudaProbe.read(env={"CUDA_VISIBLE_DEVICES": ""}, dev=tmp_path / "none").gpus_present == ""
    )


def test_a_config_that_names_cuda_on_a_cpu_machine_is_one_line_and_exit_2(
    tiny_data, tmp_path, capsys
):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    argv = tiny_args(tiny_data, tmp_path / "run", "train.device=cuda")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: train.device=cuda but CUDA cannot start") and "\n" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained


@pytest.mark.parametrize(
    ("source", "pinned", "target", "mode"),
    [
        (GPU, False, GPU, "in_place"),  # DALI mixed images: already there
        (CPU, False, GPU, "pin_then_async"),  # DALI labels, DALI cpu decode: pageable
        (CPU, True, GPU, "async"),  # DataLoader batches with pin_memory
        (CPU, False, CPU, "in_place"),
        (GPU, False, CPU, "blocking"),
    ],
)
def test_every_tensor_of_a_batch_is_copied_by_its_own_kind(source, pinned, target, mode):
    assert copy_mode(source, pinned, target) == mode


def test_auto_precision_ignores_emulated_bf16_and_takes_fp16_with_a_scaler(monkeypatch):
    def sm75_bf16(including_emulation: bool = True) -> bool:
        return including_emulation  # a Turing GPU: bf16 only in emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", sm75_bf16)
    assert precision.resolve_precision("auto", GPU) == "fp16"
    with pytest.raises(ConfigError, match="no native bf16"):
        precision.resolve_precision("bf16", GPU)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert precision.resolve_precision("auto", GPU) == "bf16"
    assert precision.resolve_precision("auto", CPU) == "fp32"


def test_cudnn_autotuning_is_switched_on_for_cuda_devices_only(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    precision.configure_device(CPU)
    assert torch.backends.cudnn.benchmark is False
    precision.configure_device(GPU)
    assert torch.backends.cudnn.benchmark is True


def test_checkpoint_state_is_moved_to_the_cpu_through_nested_containers():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    state = optimizer.state_dict()
    meta = {"state": {0: {"momentum_buffer": torch.ones(2, device="meta")}}, "groups": [(1, 2)]}
    moved = to_cpu(state)
    assert torch.equal(moved["state"][0]["momentum_buffer"], state["state"][0]["momentum_buffer"])
    assert moved["param_groups"] == state["param_groups"]
    with pytest.raises(NotImplementedError):  # a meta tensor has no data: to_cpu really copies
        to_cpu(meta)


def test_the_confusion_matrix_matches_a_counted_reference():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 7, generator=generator)
    labels = torch.randint(0, 7, (500,), generator=generator)
    accumulator = EvalAccumulator(7, "cpu")
    accumulator.update(logits[:300], labels[:300])
    accumulator.update(logits[300:], labels[300:])
    expected = torch.zeros(7, 7, dtype=torch.int64)
    for true, predicted in zip(labels.tolist(), logits.argmax(1).tolist()):
        expected[true, predicted] += 1
    assert torch.equal(accumulator.confusion, expected)


@pytest.mark.slow
def test_two_rank_alexnet_bn_evaluates_the_model_rank_0_saves(tiny_data, tmp_path, capsys):
    """Each rank's last training forward updates its own BatchNorm statistics: without the
    broadcast before eval, rank 1 scored a model nobody saved."""
    run_dir = tmp_path / "run"
    argv = tiny_args(
        tiny_data, run_dir, "model.arch=alexnet_bn", "train.epochs=1", "train.max_steps=6"
    )
    result = torchrun(2, argv)
    assert result.returncode == 0, result.stderr[-3000:]
    trained = load_checkpoint(run_dir / "checkpoints" / "last.pt")["last_eval"]
    assert main([*argv, "--evaluate"]) == 0  # one rank, the saved weights
    capsys.readouterr()
    alone = json.loads((run_dir / "eval.json").read_text())
    assert alone["val/top1"] == trained["val/top1"]
    assert abs(alone["val/loss"] - trained["val/loss"]) < 1e-6, (alone, trained)


def test_tracking_plots_of_a_dali_mixed_run_render_on_the_cpu(tiny_data, tmp_path, capsys):
    import yaml

    from pipeline.tracking.cli import main as tracking_main

    run_dir = tmp_path / "run"
    assert main(tiny_args(tiny_data, run_dir, "train.max_steps=2")) == 0
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    saved["data"].update(backend="dali", dali_decode="mixed")  # as a GPU run records it
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    capsys.readouterr()
    assert tracking_main(["plots", str(run_dir)]) == 0
    assert (run_dir / "plots" / "predictions.png").is_file()


def test_the_launcher_runs_the_preflight_on_the_training_device(capsys):
    from launch.torchrun import main as launch_main

    train = ["-m", "pipeline.train", "--config", "configs/tiny.yaml"]  # it says train.device: cpu
    assert launch_main(["--nproc", "2", "--dry-run", "--", *train]) == 0
    preflight = capsys.readouterr().out.splitlines()[0]
    assert "launch.preflight --device=cpu" in preflight
    assert launch_main(["--nproc", "2", "--dry-run", "--", *train, "train.device=auto"]) == 0
    assert "launch.preflight --device=auto" in capsys.readouterr().out
    assert launch_main(["--dry-run", "--", *train]) == 2
    assert "train.device=cpu: pass --nproc N" in capsys.readouterr().err


# ----------------------------------------------------------------------------- on a GPU


def all_tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from all_tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from all_tensors(item)


@pytest.mark.gpu
def test_a_dali_mixed_batch_and_a_pageable_cpu_batch_reach_the_gpu_without_a_host_sync():
    from pipeline.data.base import to_device_batch

    device = torch.device("cuda", torch.cuda.current_device())
    gpu_images = torch.randint(0, 255, (8, 64, 64, 3), dtype=torch.uint8, device=device)
    cpu_images = gpu_images.cpu()  # dali_decode=cpu on a GPU node: pageable
    labels = torch.arange(8, dtype=torch.int64)  # DALI's labels: pageable CPU
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        from_gpu = to_device_batch(gpu_images, labels, device, channels_last=True)
        from_cpu = to_device_batch(cpu_images, labels, device, channels_last=True)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    for images, moved_labels in (from_gpu, from_cpu):
        assert images.device == device and moved_labels.device == device
        assert torch.equal(images.permute(0, 2, 3, 1).cpu(), cpu_images)
        assert torch.equal(moved_labels.cpu(), labels)


@pytest.mark.gpu
def test_a_val_batch_updates_the_confusion_matrix_without_a_host_sync():
    device = torch.device("cuda", torch.cuda.current_device())
    logits = torch.randn(256, 1000, device=device)
    labels = torch.randint(0, 1000, (256,), device=device)
    accumulator = EvalAccumulator(1000, device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        accumulator.update(logits, labels)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert int(accumulator.confusion.sum()) == 256


@pytest.mark.gpu
def test_images_per_s_is_read_after_the_gpu_has_run_the_window():
    from pipeline.distributed import DistInfo
    from pipeline.tracking import NullTracker
    from pipeline.train.meters import TrainMeter

    device = torch.device("cuda", torch.cuda.current_device())
    meter = TrainMeter(DistInfo(device=str(device)), NullTracker(), log_every=1)
    matrix = torch.randn(8192, 8192, device=device)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    meter.restart()
    start.record()
    for _ in range(40):  # ~50 ms of queued work that returns at once to the host
        matrix = matrix @ matrix / 8192
    end.record()
    meter.samples = 1000
    elapsed = 1000 / meter.reduce()["perf/images_per_s"]
    assert elapsed * 1000 >= start.elapsed_time(end) * 0.95


@pytest.mark.gpu
def test_a_checkpoint_written_on_a_gpu_loads_on_a_machine_without_one(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    argv = tiny_args(tiny_data, run_dir, "train.device=cuda", "train.max_steps=2")
    assert main(argv) == 0
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)  # no map_location
    devices = {tensor.device.type for tensor in all_tensors(state)}
    assert devices == {"cpu"}, devices
    assert state["optimizer"]["state"]  # momentum buffers were saved, on the CPU


@pytest.mark.gpu
def test_auto_precision_is_native_bf16_on_an_ampere_or_newer_gpu():
    device = torch.device("cuda", torch.cuda.current_device())
    major, _ = torch.cuda.get_device_capability(device)
    assert precision.resolve_precision("auto", device) == ("bf16" if major >= 8 else "fp16")
