"""Export a run's checkpoint for other tools, each export checked against the checkpoint's model.

    python -m pipeline.export --checkpoint runs/alexnet/checkpoints/best.pt --format torchvision \
        --output alexnet.pth            # torchvision.models.alexnet(num_classes=N).load_state_dict
    python -m pipeline.export --checkpoint best.pt --format safetensors --output model.safetensors
    python -m pipeline.export --checkpoint best.pt --format onnx --output model.onnx
    python -m pipeline.export --checkpoint best.pt --format torchscript --output model.pt \
        --weights ema

Formats:
  torchvision   a plain state_dict (torch.save) that the family's own torchvision builder loads
                with strict=True; keys as torchvision names them (no DDP `module.`, torch.compile
                `_orig_mod.` or EMA wrapper).
  safetensors   the same tensors; the metadata (strings) holds arch, num_classes, class_names and
                wnids (JSON lists), input_size, val_resize, mean, std (JSON) and the weights used.
  onnx          torch's exporter (torch.export based), a dynamic batch size; input `images`,
                output `logits`; checked with ONNX Runtime (CPU).
  torchscript   torch.jit.trace of the model in eval mode.

Every format takes normalized float32 [B, 3, H, W] RGB, H = W = the run's data.val_crop, as the
model did in training: (pixels / 255 - mean) / std with ImageNet's mean and std. The check runs
the exported file on a fixed batch of a different size than any traced one (3 images; the
traces use 2) and compares its logits with the checkpoint's model: at most TOLERANCE apart (max
absolute difference), or nothing is written. A run with its own head (model.num_classes, a
fine-tune) exports with that head. A format the model cannot take (our alexnet_bn in
torchvision's layout, a width torchvision does not build) is one line saying why: exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
import torchvision
from torch import nn

from core.fileio import fsync_directory, temp_path
from pipeline.errors import EXIT_OK, EXIT_USAGE, UserError, first_line
from pipeline.models import build_model
from pipeline.models.registry import AUX_FAMILIES
from pipeline.trained import TrainedModel, WeightsChoice, load_trained_model

ExportFormat = Literal["torchvision", "safetensors", "onnx", "torchscript"]
FORMATS: tuple[ExportFormat, ...] = ("torchvision", "safetensors", "onnx", "torchscript")

# Max |exported - checkpoint| over the check batch's logits. torchvision and TorchScript run the
# same kernels on the same tensors; ONNX Runtime has its own kernels (conv and matmul order).
TOLERANCE: dict[ExportFormat, float] = {
    "torchvision": 1e-5,
    "safetensors": 0.0,  # the same module code over bit-identical tensors
    "onnx": 1e-4,
    "torchscript": 1e-5,
}
TRACE_BATCH = 2  # images in the batch a format is traced with (onnx, torchscript)
CHECK_BATCH = 3  # images in the check batch: not the traced size, so a fixed batch would fail


class ExportError(UserError):
    """A format this model cannot take, or an export that does not match its checkpoint."""


@dataclasses.dataclass(frozen=True)
class ExportReport:
    path: Path
    format: ExportFormat
    weights: str
    max_abs_diff: float  # over CHECK_BATCH images' logits
    tolerance: float

    def summary(self) -> str:
        return (
            f"exported {self.weights} weights as {self.format} to {self.path}: logits within "
            f"{self.max_abs_diff:.2e} of the checkpoint's on a fixed batch of {CHECK_BATCH} "
            f"(tolerance {self.tolerance:.0e})"
        )


def fixed_batch(size: int, count: int) -> torch.Tensor:
    """`count` seeded normal images, float32 [count, 3, size, size]: the normalized inputs the
    model takes (the same batch on every machine and every call)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(count, 3, size, size, generator=generator)


def export_checkpoint(
    checkpoint: Path, fmt: ExportFormat, output: Path, weights: WeightsChoice = "auto"
) -> ExportReport:
    """Write `checkpoint`'s model as `fmt` to `output`, checked; ExportError when it cannot."""
    trained = load_trained_model(Path(checkpoint), weights)
    return export_model(trained, fmt, Path(output))


def export_model(trained: TrainedModel, fmt: ExportFormat, output: Path) -> ExportReport:
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    write, run_exported = EXPORTERS[fmt]
    output.parent.mkdir(parents=True, exist_ok=True)
    images = fixed_batch(trained.input_size, CHECK_BATCH)
    with torch.no_grad():
        expected = trained.model(images)  # [3, num_classes]
    partial = temp_path(output, ".partial" + output.suffix)
    try:
        write(trained, partial)
        got = run_exported(trained, partial, images)
        difference = (got.float() - expected.float()).abs().max().item()
        if not difference <= TOLERANCE[fmt]:  # a NaN fails too
            raise ExportError(
                f"the {fmt} export of {trained.source} gives logits {difference:.2e} away from the "
                f"checkpoint's (tolerance {TOLERANCE[fmt]:.0e}): nothing written to {output}"
            )
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    fsync_directory(output.parent)
    return ExportReport(output, fmt, trained.weights, difference, TOLERANCE[fmt])


# -- torchvision ------------------------------------------------------------------------------
def torchvision_builder(trained: TrainedModel) -> nn.Module:
    """torchvision's own builder for the run's arch and head, fresh weights (nothing
    downloaded); ExportError when torchvision has no such model."""
    cfg = trained.cfg.model
    if cfg.arch not in torchvision.models.list_models(module=torchvision.models):
        raise ExportError(
            f"{cfg.arch} is our own AlexNet variant: torchvision has no builder for it; export "
            "--format safetensors, onnx or torchscript"
        )
    if cfg.blurpool:
        raise ExportError(
            "model.blurpool wraps strided convs in a blur (keys `conv.weight`) that torchvision's "
            f"{cfg.arch} does not have: export --format safetensors, onnx or torchscript"
        )
    kwargs: dict = {"num_classes": trained.num_classes}
    if cfg.arch in AUX_FAMILIES:
        kwargs.update(aux_logits=True, init_weights=False, transform_input=cfg.transform_input)
    if cfg.arch.startswith("vit_"):
        kwargs["image_size"] = trained.cfg.data.train_crop
    if cfg.arch.startswith("maxvit"):
        kwargs["input_size"] = (trained.cfg.data.train_crop,) * 2
    return torchvision.models.get_model(cfg.arch, weights=None, **kwargs).eval()


def write_torchvision(trained: TrainedModel, path: Path) -> None:
    builder = torchvision_builder(trained)
    try:
        builder.load_state_dict(trained.state, strict=True)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise ExportError(
            f"the weights do not fit torchvision.models.{trained.arch}(num_classes="
            f"{trained.num_classes}) ({lines[1] if len(lines) > 1 else lines[0]}): torchvision "
            "builds the published widths only (model.width_mult=1, model.classifier_width=4096); "
            "export --format safetensors, onnx or torchscript"
        ) from None
    torch.save({key: value.contiguous() for key, value in trained.state.items()}, path)


def run_torchvision(trained: TrainedModel, path: Path, images: torch.Tensor) -> torch.Tensor:
    model = torchvision_builder(trained)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    with torch.no_grad():
        return model(images)


# -- safetensors ------------------------------------------------------------------------------
def write_safetensors(trained: TrainedModel, path: Path) -> None:
    from safetensors.torch import save

    # metadata values must be strings: lists and numbers as JSON
    metadata = {
        key: value if isinstance(value, str) else json.dumps(value)
        for key, value in trained.describe().items()
    }
    tensors = {key: value.contiguous() for key, value in trained.state.items()}
    try:
        data = save(tensors, metadata=metadata)
    except (RuntimeError, ValueError) as err:  # tensors sharing memory (tied weights)
        raise ExportError(f"safetensors cannot hold {trained.arch}'s tensors: {first_line(err)}")
    path.write_bytes(data)


def run_safetensors(trained: TrainedModel, path: Path, images: torch.Tensor) -> torch.Tensor:
    from safetensors.torch import load_file

    model = build_model(trained.cfg.model, trained.num_classes, trained.cfg.data.train_crop)
    model.load_state_dict(load_file(path), strict=True)
    with torch.no_grad():
        return model.eval()(images)


# -- onnx -------------------------------------------------------------------------------------
ONNX_INLINE_LIMIT = 1 << 30  # bytes of weights kept inside the .onnx file (protobuf caps at 2 GB)


def write_onnx(trained: TrainedModel, path: Path) -> None:
    example = fixed_batch(trained.input_size, TRACE_BATCH)
    size = sum(t.numel() * t.element_size() for t in trained.state.values())
    batch = torch.export.Dim("batch", min=1)
    try:
        # the exporter prints its progress: kept off the console
        quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
        with warnings.catch_warnings(), quiet[0], quiet[1]:
            warnings.simplefilter(
                "ignore"
            )  # the exporter's deprecation notes about torch internals
            torch.onnx.export(
                trained.model,
                (example,),
                str(path),
                input_names=["images"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
                external_data=size > ONNX_INLINE_LIMIT,
                dynamo=True,
                verbose=False,
            )
    except Exception as err:  # noqa: BLE001 (whatever the exporter refuses is this model's limit)
        raise ExportError(
            f"torch {torch.__version__} cannot export {trained.arch} to ONNX "
            f"({type(err).__name__}: {first_line(err)}): export --format torchscript or "
            "safetensors"
        ) from None


def run_onnx(trained: TrainedModel, path: Path, images: torch.Tensor) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"images": images.numpy()})
    return torch.from_numpy(logits)


# -- torchscript ------------------------------------------------------------------------------
def write_torchscript(trained: TrainedModel, path: Path) -> None:
    example = fixed_batch(trained.input_size, TRACE_BATCH)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about Python values: checked below
            traced = torch.jit.trace(trained.model, example)
    except Exception as err:  # noqa: BLE001 (what the tracer refuses is this model's limit)
        raise ExportError(
            f"torch.jit.trace cannot trace {trained.arch} ({type(err).__name__}: "
            f"{first_line(err)}): export --format onnx or safetensors"
        ) from None
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # torch 2.13 marks TorchScript deprecated (for torch.export); TorchServe and C++ users
        # still load it, and the check below proves this file works
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(traced, buffer)
    path.write_bytes(buffer.getvalue())


def run_torchscript(trained: TrainedModel, path: Path, images: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # see write_torchscript
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(images)


EXPORTERS: dict[ExportFormat, tuple[Callable, Callable]] = {
    "torchvision": (write_torchvision, run_torchvision),
    "safetensors": (write_safetensors, run_safetensors),
    "onnx": (write_onnx, run_onnx),
    "torchscript": (write_torchscript, run_torchscript),
}


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.export`; returns the exit code (2 with one line for what cannot be)."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="RUN_DIR/checkpoints/X.pt")
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("--output", type=Path, required=True, help="the file to write")
    parser.add_argument(
        "--weights",
        choices=["auto", "raw", "ema"],
        default="auto",
        help="raw or weight-EMA weights; auto: those eval.best_metric followed (default)",
    )
    args = parser.parse_args(argv)
    try:
        report = export_checkpoint(args.checkpoint, args.format, args.output, args.weights)
    except UserError as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    print(report.summary())
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
