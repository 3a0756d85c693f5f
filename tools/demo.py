"""The embedded demo: the whole pipeline, end to end, on real images, on a laptop CPU, in minutes.

    make demo                                     # installs with uv, then runs the line below
    python -m tools.demo                       # wds shards, 2 DDP ranks over gloo on CPU
    python -m tools.demo --backend folder      # or dali; same data, another loader
    python -m tools.demo --arch resnet18       # any torchvision model that takes 64 px
    python -m tools.demo --workdir /tmp/demo --epochs 20 optim.lr=0.004  # any config override
    python -m tools.demo --dataset cifar10 --source ~/Downloads/cifar-10-python.tar.gz
    python -m tools.demo --dataset mnist --source ~/mnist   # the four IDX .gz files

Stages, each a real command whose full output also goes to WORKDIR/logs/<stage>.log:
  1. raw data  scikit-learn's 1,797 real handwritten digits, written as a raw ImageNet in
               Kaggle's layout (train class folders named by WNID, a flat val folder,
               LOC_val_solution.csv, LOC_synset_mapping.txt): tools/demo_data.py.
  2. prepare   python -m preprocess prepare RAW DST: val sorted by the CSV, images resized,
               class folders and shuffled WebDataset shards + manifest written.
  3. train     python -m launch --nproc 2 -- -m pipeline.train --config configs/demo.yaml: the
               project's torchrun wrapper (a preflight all-reduce, then torchrun --standalone
               with 2 ranks), DDP over gloo, evaluation after every epoch, checkpoints,
               metrics, a W&B offline run and plots.
Then it prints the final val top-1/top-5 against chance and where every artefact is, and exits 1
when top-1 is below REQUIRED_TOP1 (5x chance; --min-top1 changes it) or an artefact is missing.
A rerun reuses the raw data and the prepared shards and trains a fresh run.

`--dataset NAME --source PATH` runs the same stages on a download the user already has (see
DATASET_DEMOS): stage 1 is skipped, `prepare` reads PATH as shipped (CIFAR's tar.gz, MNIST's IDX
files; docs/datasets.md) with a per-class subset that keeps training to minutes on a CPU, and
the config is configs/cifar_demo.yaml or configs/mnist_demo.yaml. Its bar is 2x chance.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path
from typing import Literal

from core.shard_format import read_manifest
from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.models import ALEXNET_VARIANTS, check_arch, check_input_sizes
from tools.demo_data import build_demo_raw
from tools.demo_report import DemoResult, find_artefacts, parse_final_line, report, shortfalls
from tools.demo_runner import REPOSITORY_ROOT, StageFailed, run_stage, stage_environment

Backend = Literal["folder", "wds", "dali"]

DEMO_CONFIG = REPOSITORY_ROOT / "configs" / "demo.yaml"

# The 8x8 digits are upscaled to 96 px JPEGs; prepare shrinks them to a 72 px short side (the
# demo's "256") and the config crops 64 px, so every stage resizes as it would on ImageNet.
RAW_IMAGE_SIZE = 96
SHORT_SIDE = 72
SHARD_SIZE = 128  # samples per shard: ~12 train shards, so 2 ranks x workers all get whole shards
FAST_EPOCHS = 6  # --fast: the same demo with fewer epochs (what the CI test runs)
NUM_RANKS = 2

# What the demo must reach to count as having learned: 5x chance (10 classes). The full demo
# reaches ~95 % and --fast ~80-90 %; scrambled labels, val sort or class order stay near 10 %.
REQUIRED_TOP1 = 50.0


@dataclasses.dataclass(frozen=True)
class DatasetDemo:
    """The demo on a user's own download of another dataset (`--dataset NAME --source PATH`)."""

    config: Path
    subset: tuple[str, ...]  # prepare flags: a per-class subset that trains in minutes on a CPU
    source_hint: str  # what --source should be, for the error when it is missing


_CIFAR_DEMO = REPOSITORY_ROOT / "configs" / "cifar_demo.yaml"
_MNIST_DEMO = REPOSITORY_ROOT / "configs" / "mnist_demo.yaml"
_FEW = ("--train-per-class", "500", "--val-per-class", "100")  # 5,000 + 1,000 of 10 classes
DATASET_DEMOS: dict[str, DatasetDemo] = {
    "cifar10": DatasetDemo(_CIFAR_DEMO, _FEW, "the downloaded cifar-10-python.tar.gz"),
    "cifar100": DatasetDemo(
        _CIFAR_DEMO,
        ("--train-per-class", "100", "--val-per-class", "20"),
        "the downloaded cifar-100-python.tar.gz",
    ),
    **{
        name: DatasetDemo(_MNIST_DEMO, _FEW, f"the folder holding {title}'s four IDX .gz files")
        for name, title in (
            ("mnist", "MNIST"),
            ("fashion-mnist", "Fashion-MNIST"),
            ("kmnist", "KMNIST"),
        )
    },
}
DIGITS = "digits"  # the default: the embedded scikit-learn digits, nothing to download


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    backend: Backend = "wds"
    workdir: Path = Path("demo")
    epochs: int = 0  # 0 keeps configs/demo.yaml's train.epochs (or FAST_EPOCHS with fast)
    fast: bool = False
    overrides: tuple[str, ...] = ()  # extra section.key=value for pipeline.train
    echo: bool = True  # stream each stage's output to the console as well as to its log
    required_top1: float = REQUIRED_TOP1  # percent; below it the demo exits 1 (0 never fails)
    dataset: str = DIGITS  # or a key of DATASET_DEMOS, read from `source`
    source: Path | None = None  # the user's download, for a dataset other than digits
    arch: str = "alexnet"  # any model.arch; the demo config's AlexNet widths apply to AlexNets


def prepare_command(raw: Path, prepared: Path, dataset: str = DIGITS) -> list[str]:
    """`python -m preprocess prepare RAW DST` with the demo's small sizes."""
    if dataset != DIGITS:  # the images keep their 32 / 28 px; the loader upsamples them
        return [
            sys.executable,
            "-m",
            "preprocess",
            "prepare",
            str(raw),
            str(prepared),
            "--dataset",
            dataset,
            *DATASET_DEMOS[dataset].subset,
            "--shard-size",
            str(SHARD_SIZE * 4),
        ]
    return [
        sys.executable,
        "-m",
        "preprocess",
        "prepare",
        str(raw),
        str(prepared),
        "--short-side",
        str(SHORT_SIDE),
        "--shard-size",
        str(SHARD_SIZE),
    ]


def data_directories(prepared: Path, backend: Backend) -> tuple[Path, Path]:
    """(train, val) for a backend: the resized class folders for `folder`, the shards otherwise."""
    if backend == "folder":
        return prepared / "folders" / "train", prepared / "folders" / "val"
    return prepared / "train", prepared / "val"


def train_overrides(options: DemoOptions, prepared: Path, run_dir: Path) -> list[str]:
    """The `section.key=value` list pipeline.train gets on top of configs/demo.yaml."""
    train_dir, val_dir = data_directories(prepared, options.backend)
    overrides = [
        *arch_overrides(options.arch),
        f"data.backend={options.backend}",
        f"data.train_dir={train_dir}",
        f"data.val_dir={val_dir}",
        f"train.run_dir={run_dir}",
    ]
    epochs = options.epochs or (FAST_EPOCHS if options.fast else 0)
    if epochs:
        overrides.append(f"train.epochs={epochs}")
    overrides.extend(options.overrides)
    return overrides


def arch_overrides(arch: str) -> list[str]:
    """model.arch=ARCH, and for a torchvision architecture the demo config's AlexNet-only knobs
    (narrow widths, dropout 0.2) back at their defaults, which such a model refuses otherwise."""
    if arch in ALEXNET_VARIANTS:
        return [f"model.arch={arch}"]
    return [
        f"model.arch={arch}",
        "model.width_mult=1.0",
        "model.classifier_width=4096",
        "model.dropout=-1",
    ]


def train_command(options: DemoOptions, prepared: Path, run_dir: Path) -> list[str]:
    """The project's launcher (torchrun after a preflight all-reduce): 2 CPU ranks, gloo."""
    return [
        sys.executable,
        "-m",
        "launch",
        "--nproc",
        str(NUM_RANKS),
        "--",
        "-m",
        "pipeline.train",
        "--config",
        str(demo_config(options)),
        *train_overrides(options, prepared, run_dir),
    ]


def demo_config(options: DemoOptions) -> Path:
    """configs/demo.yaml for the digits, the dataset's demo config otherwise."""
    return DEMO_CONFIG if options.dataset == DIGITS else DATASET_DEMOS[options.dataset].config


@dataclasses.dataclass(frozen=True)
class DemoPaths:
    """Where a demo run reads and writes."""

    logs: Path  # WORKDIR/logs: one log per stage
    raw: Path  # the raw data: WORKDIR/raw for the digits, else the user's --source
    prepared: Path  # prepare's DST
    run_dir: Path  # the training run (deleted and rewritten by every demo)


def run_demo(options: DemoOptions) -> DemoResult:
    """Build the raw digits, prepare them, train with 2 DDP ranks; raise StageFailed on failure."""
    paths = demo_paths(options)
    check_demo_config(options, paths)
    env = stage_environment()
    seconds: dict[str, float] = {}
    seconds.update(stage_raw_data(options, paths))
    seconds["prepare"] = stage_prepare(options, paths, env)
    output, seconds["train"] = stage_train(options, paths, env)
    top1, top5 = parse_final_line(output)
    return DemoResult(
        top1=top1,
        top5=top5,
        chance=100.0 / read_manifest(paths.prepared / "train").num_classes,
        run_dir=paths.run_dir,
        artefacts=find_artefacts(paths.run_dir),
        seconds=seconds,
    )


def demo_paths(options: DemoOptions) -> DemoPaths:
    """The run's folders under WORKDIR, named by dataset, backend, arch and --fast."""
    workdir = options.workdir.resolve()
    digits = options.dataset == DIGITS
    raw = workdir / "raw" if digits or options.source is None else options.source.resolve()
    prepared = workdir / ("prepared" if digits else f"prepared-{options.dataset}")
    run_dir = workdir / (
        "run-"
        + ("" if digits else f"{options.dataset}-")
        + options.backend
        + ("" if options.arch == "alexnet" else f"-{options.arch}")
        + ("-fast" if options.fast else "")
    )
    return DemoPaths(workdir / "logs", raw, prepared, run_dir)


def check_demo_config(options: DemoOptions, paths: DemoPaths) -> None:
    """A typo in an override fails here, at once, not after the data stages and torchrun's
    start."""
    for override in options.overrides:
        if override.partition("=")[0].strip() == "model.arch":
            raise StageFailed(
                "stage 'config' rejected the overrides: model.arch: choose the model with --arch "
                f"{override.partition('=')[2].strip()} (the demo's alexnet config has keys "
                "--arch resets for other models)"
            )
    try:
        config = load_config(
            demo_config(options), train_overrides(options, paths.prepared, paths.run_dir)
        )
        check_input_sizes(config)  # the model keys and crops, as the trainer will check them
    except ConfigError as err:
        raise StageFailed(f"stage 'config' rejected the overrides: {err}") from err
    # The demo deletes, reads and lists its own run dir: a train.run_dir override would move the run
    # elsewhere.
    if Path(config.train.run_dir).resolve() != paths.run_dir:
        raise StageFailed(
            f"stage 'config' rejected the overrides: train.run_dir={config.train.run_dir} but the "
            f"demo keeps its run in {paths.run_dir} (it deletes and reports that directory): use "
            "--workdir DIR to move it"
        )


def stage_raw_data(options: DemoOptions, paths: DemoPaths) -> dict[str, float]:
    """Stage 1: the digits written as a Kaggle-layout ImageNet ({"raw data": seconds}), or the
    user's download checked ({})."""
    start = time.perf_counter()
    raw = paths.raw
    if options.dataset != DIGITS:
        if not raw.exists():
            raise StageFailed(
                f"stage 'raw data': --source {raw} does not exist: pass "
                f"{DATASET_DEMOS[options.dataset].source_hint}"
            )
        print(f"[demo 1/3] raw data: your {options.dataset} download, {raw}", flush=True)
        return {}
    print(
        f"[demo 1/3] raw data: real handwritten digits as a Kaggle-layout ImageNet in {raw}",
        flush=True,
    )
    try:
        dataset = build_demo_raw(raw, image_size=RAW_IMAGE_SIZE)
    except (OSError, ValueError) as err:
        raise StageFailed(f"stage 'raw data' failed writing {raw}: {err}") from err
    seconds = time.perf_counter() - start
    print(
        f"[demo 1/3] {dataset.train_count} train + {dataset.val_count} val images, "
        f"{len(dataset.classes)} classes ({seconds:.1f} s)",
        flush=True,
    )
    return {"raw data": seconds}


def stage_prepare(options: DemoOptions, paths: DemoPaths, env: dict[str, str]) -> float:
    """Stage 2: `python -m preprocess prepare`; returns its seconds."""
    start = time.perf_counter()
    log = paths.logs / "prepare.log"
    print(f"[demo 2/3] prepare: {paths.raw} -> {paths.prepared} (log: {log})", flush=True)
    run_stage(
        "prepare",
        prepare_command(paths.raw, paths.prepared, options.dataset),
        log,
        env=env,
        echo=options.echo,
    )
    return time.perf_counter() - start


def stage_train(options: DemoOptions, paths: DemoPaths, env: dict[str, str]) -> tuple[str, float]:
    """Stage 3: a fresh run of the launcher with 2 CPU ranks; returns (its output, seconds)."""
    # Each demo trains from scratch: a leftover run dir would otherwise auto-resume and finish at
    # once.
    if paths.run_dir.exists():
        shutil.rmtree(paths.run_dir)
    start = time.perf_counter()
    log = paths.logs / "train.log"
    print(
        f"[demo 3/3] train: {NUM_RANKS} DDP ranks on CPU (gloo), {options.backend} loader, "
        f"run dir {paths.run_dir} (log: {log})",
        flush=True,
    )
    output = run_stage(
        "train",
        train_command(options, paths.prepared, paths.run_dir),
        log,
        env=env,
        echo=options.echo,
    )
    return output, time.perf_counter() - start


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.demo",
        description=(
            "Real handwritten digits → raw ImageNet layout → prepare → 2-rank DDP training on CPU."
        ),
    )
    parser.add_argument(
        "--backend",
        choices=["folder", "wds", "dali"],
        default="wds",
        help="data loader (default wds)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("demo"),
        help="where data, logs and the run go (default ./demo)",
    )
    parser.add_argument(
        "--epochs", type=int, default=0, help="training epochs (default: configs/demo.yaml)"
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help=f"the same demo with {FAST_EPOCHS} epochs (what CI runs)",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="stage output only to WORKDIR/logs, not the console"
    )
    parser.add_argument(
        "--min-top1",
        type=float,
        default=None,
        help=(
            "exit 1 when the final val top-1 (percent) is below this "
            f"(default {REQUIRED_TOP1:.0f} for the digits, 2x chance for --dataset; 0 never fails)"
        ),
    )
    parser.add_argument(
        "--arch",
        default="alexnet",
        help="the model: alexnet (default, narrow as configs/demo.yaml sets it) or any "
        "torchvision classification model that takes 64 px, e.g. resnet18 or mobilenet_v3_small",
    )
    parser.add_argument(
        "--dataset",
        choices=[DIGITS, *DATASET_DEMOS],
        default=DIGITS,
        help="the embedded digits (default), or your own download of one of these, via --source",
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        help="with --dataset: the download as shipped (cifar-10-python.tar.gz, the IDX folder)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="extra config overrides for pipeline.train",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.epochs < 0:
        print(f"error: --epochs must be positive, got {args.epochs}", file=sys.stderr)
        return 2
    if not DEMO_CONFIG.is_file():
        print(
            f"error: {DEMO_CONFIG} is missing: run the demo from a checkout of the repository",
            file=sys.stderr,
        )
        return 2
    try:
        check_arch(args.arch)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dataset != DIGITS and args.source is None:
        print(
            f"error: --dataset {args.dataset} reads your own download: pass --source PATH, "
            f"{DATASET_DEMOS[args.dataset].source_hint}",
            file=sys.stderr,
        )
        return 2
    options = DemoOptions(
        backend=args.backend,
        workdir=args.workdir,
        epochs=args.epochs,
        fast=args.fast,
        overrides=tuple(args.overrides),
        echo=not args.quiet,
        required_top1=REQUIRED_TOP1 if args.min_top1 is None else args.min_top1,
        dataset=args.dataset,
        source=args.source,
        arch=args.arch,
    )
    try:
        result = run_demo(options)
    except StageFailed as err:
        print(f"demo failed: {err}", file=sys.stderr)
        return 1
    print(report(result))
    required = options.required_top1
    if args.min_top1 is None and args.dataset != DIGITS:
        required = 2 * result.chance  # a download we have not measured: twice chance
    problems = shortfalls(result, required)
    if problems:
        print(f"demo failed: {'; '.join(problems)}", file=sys.stderr)
        return 1
    print(
        f"demo passed: val top-1 {result.top1:.2f}% >= the required {required:.0f}% "
        "and every artefact written"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
