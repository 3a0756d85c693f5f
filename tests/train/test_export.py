"""pipeline.export on real checkpoints: torchvision's own builders load the exports with
strict=True, ONNX Runtime and TorchScript reproduce the logits, safetensors carries the class
names, and a format a model cannot take is one line (exit 2)."""

from __future__ import annotations

import json

import onnxruntime
import pytest
import torch
import torchvision
from safetensors import safe_open
from train_helpers import tiny_args

from pipeline.export import fixed_batch, main
from pipeline.train.cli import main as train_main
from pipeline.trained import load_trained_model

# Full-width models (torchvision builds only the published widths), one SGD step each: the
# export's job is the key layout and the head, not accuracy.
FULL_WIDTH = ("model.width_mult=1.0", "model.classifier_width=4096", "train.max_steps=1")
ONE_STEP = ("optim.name=sgd", "optim.momentum=0", "train.epochs=1")


@pytest.fixture(scope="module")
def torchvision_runs(tiny_data, tmp_path_factory):
    """{arch: best.pt} of alexnet (4 classes, the data's) and resnet18 with its own head of 10
    outputs (model.num_classes=10: a head with another class count)."""
    root = tmp_path_factory.mktemp("tv-runs")
    runs = {}
    for arch, extra in (("alexnet", ()), ("resnet18", ("model.num_classes=10",))):
        run_dir = root / arch
        argv = tiny_args(tiny_data, run_dir, f"model.arch={arch}", *FULL_WIDTH, *ONE_STEP, *extra)
        assert train_main(argv) == 0
        runs[arch] = run_dir / "checkpoints/best.pt"
    return runs


@pytest.mark.parametrize(("arch", "outputs"), [("alexnet", 4), ("resnet18", 10)])
def test_torchvision_builders_load_the_export_strictly_and_give_the_checkpoints_logits(
    arch, outputs, torchvision_runs, tmp_path, capsys
):
    output = tmp_path / f"{arch}.pth"
    assert main(["--checkpoint", str(torchvision_runs[arch]), "--format", "torchvision",
                 "--output", str(output)]) == 0  # fmt: skip
    assert "logits within" in capsys.readouterr().out
    builder = getattr(torchvision.models, arch)(num_classes=outputs).eval()
    builder.load_state_dict(torch.load(output, weights_only=True), strict=True)
    trained = load_trained_model(torchvision_runs[arch], "raw")
    images = fixed_batch(64, 4)
    with torch.no_grad():
        torch.testing.assert_close(builder(images), trained.model(images), rtol=0, atol=1e-5)


def test_onnx_runtime_torchscript_and_safetensors_reproduce_the_checkpoint(
    tiny_run, tmp_path, capsys
):
    checkpoint = tiny_run / "checkpoints/best.pt"
    trained = load_trained_model(checkpoint, "ema")
    paths = {fmt: tmp_path / f"model.{fmt}" for fmt in ("onnx", "torchscript", "safetensors")}
    for fmt, path in paths.items():
        argv = ["--checkpoint", str(checkpoint), "--format", fmt, "--output", str(path)]
        assert main([*argv, "--weights", "ema"]) == 0, capsys.readouterr().err
    images = fixed_batch(64, 5)  # 5: neither the traced batch (2) nor the check batch (3)
    with torch.no_grad():
        expected = trained.model(images)

    session = onnxruntime.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"  # a dynamic batch dimension
    (logits,) = session.run(["logits"], {"images": images.numpy()})
    assert (torch.from_numpy(logits) - expected).abs().max().item() <= 1e-4

    with pytest.warns(DeprecationWarning):  # torch 2.13 deprecates TorchScript; it still loads
        scripted = torch.jit.load(str(paths["torchscript"]))
    with torch.no_grad():
        torch.testing.assert_close(scripted(images), expected, rtol=0, atol=1e-5)

    with safe_open(str(paths["safetensors"]), "pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    assert json.loads(metadata["class_names"]) == [
        "tench, Tinca tinca",
        "goldfish, Carassius auratus",
        "great white shark",
        "tiger shark, Galeocerdo cuvieri",
    ]  # tests/train/conftest.py's LOC_synset_mapping.txt, through the checkpoint
    assert json.loads(metadata["wnids"]) == ["n01440764", "n01443537", "n01484850", "n01491361"]
    assert (metadata["arch"], metadata["input_size"], metadata["weights"]) == (
        "alexnet",
        "64",
        "ema",
    )
    assert json.loads(metadata["mean"]) == [0.485, 0.456, 0.406]
    raw = load_trained_model(checkpoint, "raw").state
    assert all(torch.equal(tensors[key], value) for key, value in trained.state.items())
    assert not all(torch.equal(tensors[key], value) for key, value in raw.items())  # EMA, not raw


def test_a_format_the_model_cannot_take_is_one_line_and_writes_nothing(tiny_run, tmp_path, capsys):
    output = tmp_path / "alexnet.pth"
    argv = ["--checkpoint", str(tiny_run / "checkpoints/best.pt"), "--format", "torchvision"]
    assert main([*argv, "--output", str(output)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: the weights do not fit torchvision.models.alexnet(")
    assert "model.width_mult=1" in error and "\n" not in error
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temp

    assert main(["--checkpoint", str(tmp_path / "missing.pt"), "--format", "onnx",
                 "--output", str(output)]) == 2  # fmt: skip
    assert "does not exist" in capsys.readouterr().err
