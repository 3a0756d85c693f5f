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
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

from core.shard_format import read_manifest
from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.models import ALEXNET_VARIANTS, check_arch, check_input_sizes
from tools.demo_data import build_demo_raw

Backend = Literal["folder", "wds", "dali"]

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
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

FINAL_LINE = re.compile(r"final: val/top1=(?P<top1>[0-9.]+) val/top5=(?P<top5>[0-9.]+)")


# What every demo run must leave behind (the CI test checks each one).
EXPECTED_ARTEFACTS = (
    "W&B offline run",
    "metrics (JSONL)",
    "accuracy curves PNG",
    "loss curves PNG",
    "sample grid PNG",
    "prediction grid PNG",
    "checkpoints",
)


class StageFailed(Exception):
    """A stage's command failed; the message names the stage and its log."""


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


@dataclasses.dataclass(frozen=True)
class DemoResult:
    top1: float  # percent
    top5: float  # percent
    chance: float  # percent: 100 / number of classes
    run_dir: Path
    artefacts: dict[str, Path]  # what → where, only the ones that exist
    seconds: dict[str, float]  # stage → wall seconds


# A line that names the cause: "error: ..." from our CLIs, or a worker's "[rank0]: SomeError: ...".
CAUSE_LINE = re.compile(r"^(\[rank\d+\]:\s*)?(error:|\w*(Error|Exception)\b:?)")

GLOG_LINE = re.compile(r"^[IWE]\d{4} ")  # torchrun's own "W1123 00:13:40 ..." log lines


def cause_line(output: str) -> str:
    """The most telling line of a failed command's output: the first error, else the last line.

    torchrun ends a failure with its own ChildFailedError report, so the worker's first
    exception is the useful line, not the last one.
    """
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if CAUSE_LINE.match(line) and "ChildFailedError" not in line:
            return line
    meaningful = [line for line in lines if line.strip("=-") and not GLOG_LINE.match(line)]
    return (meaningful or lines or ["(no output)"])[-1]


def run_stage(
    stage: str, command: list[str], log_path: Path, *, env: dict[str, str], echo: bool
) -> str:
    """Run one stage's command, teeing its output to `log_path` (and the console); return the
    output."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    chunks: list[bytes] = []
    with open(log_path, "wb") as log:
        log.write(("$ " + " ".join(command) + "\n").encode())
        log.flush()
        try:
            process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPOSITORY_ROOT,
            )
        except OSError as err:
            raise StageFailed(f"stage '{stage}' could not start {command[0]}: {err}") from err
        assert process.stdout is not None
        while chunk := process.stdout.read1(65536):
            chunks.append(chunk)
            log.write(chunk)
            log.flush()
            if echo:
                echo_bytes(chunk)
        returncode = process.wait()
    output = b"".join(chunks).decode(errors="replace")
    if returncode != 0:
        raise StageFailed(
            f"stage '{stage}' failed with exit status {returncode}: {cause_line(output)!r}; "
            f"full log: {log_path}"
        )
    return output


def echo_bytes(chunk: bytes) -> None:
    """Pass a stage's raw output through (progress bars' carriage returns included)."""
    stream = getattr(sys.stdout, "buffer", None)  # absent when stdout is a StringIO or a notebook
    if stream is not None:
        stream.write(chunk)
        stream.flush()
    else:
        sys.stdout.write(chunk.decode(errors="replace"))
        sys.stdout.flush()


def stage_environment() -> dict[str, str]:
    """The environment the stages run in: unbuffered output, one thread per rank, W&B quiet."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    # 2 ranks on a small CPU: one intra-op thread each avoids oversubscription (torchrun would
    # set this too, with a warning).
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("WANDB_SILENT", "true")
    env.setdefault("WANDB_CONSOLE", "off")
    return env


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


def parse_final_line(output: str) -> tuple[float, float]:
    """(top1, top5) percent from the trainer's `final: val/top1=.. val/top5=..` line."""
    matches = list(FINAL_LINE.finditer(output))
    if not matches:
        raise StageFailed(
            "stage 'train' finished without printing 'final: val/top1=.. val/top5=..'"
        )
    return float(matches[-1]["top1"]), float(matches[-1]["top5"])


def find_artefacts(run_dir: Path) -> dict[str, Path]:
    """What the run wrote, by name: the W&B offline run, metrics, plots and checkpoints."""
    found: dict[str, Path] = {}
    wandb_dir = run_dir / "wandb"
    offline_runs = sorted(wandb_dir.glob("offline-run-*")) if wandb_dir.is_dir() else []
    online_runs = sorted(wandb_dir.glob("run-*")) if wandb_dir.is_dir() else []
    if offline_runs:
        found["W&B offline run"] = offline_runs[-1]
    if online_runs:  # log.wandb=online: already uploaded, the local copy is still here
        found["W&B run (synced online)"] = online_runs[-1]
    for name, path in [
        ("metrics (JSONL)", run_dir / "metrics.jsonl"),
        ("resolved config", run_dir / "config.yaml"),
        ("per-class accuracy", run_dir / "per_class_accuracy.csv"),
        ("checkpoints", run_dir / "checkpoints"),
    ]:
        if path.exists():
            found[name] = path
    plots = sorted((run_dir / "plots").glob("*.png")) if (run_dir / "plots").is_dir() else []
    # pipeline.tracking writes accuracy.png + loss.png, train_batch.png and predictions.png;
    # match by words so a renamed plot is still reported.
    for label, words in [
        ("accuracy curves PNG", ("accuracy", "curve", "top1")),
        ("loss curves PNG", ("loss",)),
        ("sample grid PNG", ("sample", "sanity", "batch")),
        ("prediction grid PNG", ("predict",)),
    ]:
        for plot in plots:
            if any(word in plot.stem for word in words) and plot not in found.values():
                found[label] = plot
                break
    return found


def last_val_metrics(metrics_path: Path) -> dict[str, float]:
    """The last metrics.jsonl record that has val/top1."""
    last: dict[str, float] = {}
    if metrics_path.is_file():
        for line in metrics_path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                if "val/top1" in record:
                    last = record
    return last


def demo_config(options: DemoOptions) -> Path:
    """configs/demo.yaml for the digits, the dataset's demo config otherwise."""
    return DEMO_CONFIG if options.dataset == DIGITS else DATASET_DEMOS[options.dataset].config


def run_demo(options: DemoOptions) -> DemoResult:
    """Build the raw digits, prepare them, train with 2 DDP ranks; raise StageFailed on failure."""
    workdir = options.workdir.resolve()
    logs = workdir / "logs"
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
    env = stage_environment()
    seconds: dict[str, float] = {}

    # A typo in an override fails here, at once, not after the data stages and torchrun's start.
    for override in options.overrides:
        if override.partition("=")[0].strip() == "model.arch":
            raise StageFailed(
                "stage 'config' rejected the overrides: model.arch: choose the model with --arch "
                f"{override.partition('=')[2].strip()} (the demo's alexnet config has keys "
                "--arch resets for other models)"
            )
    try:
        config = load_config(demo_config(options), train_overrides(options, prepared, run_dir))
        check_input_sizes(config)  # the model keys and crops, as the trainer will check them
    except ConfigError as err:
        raise StageFailed(f"stage 'config' rejected the overrides: {err}") from err
    # The demo deletes, reads and lists its own run dir: a train.run_dir override would move the run
    # elsewhere.
    if Path(config.train.run_dir).resolve() != run_dir:
        raise StageFailed(
            f"stage 'config' rejected the overrides: train.run_dir={config.train.run_dir} but the "
            f"demo keeps its run in {run_dir} (it deletes and reports that directory): use "
            "--workdir DIR to move it"
        )

    start = time.perf_counter()
    if not digits:
        if not raw.exists():
            raise StageFailed(
                f"stage 'raw data': --source {raw} does not exist: pass "
                f"{DATASET_DEMOS[options.dataset].source_hint}"
            )
        print(f"[demo 1/3] raw data: your {options.dataset} download, {raw}", flush=True)
    else:
        print(
            f"[demo 1/3] raw data: real handwritten digits as a Kaggle-layout ImageNet in {raw}",
            flush=True,
        )
        try:
            dataset = build_demo_raw(raw, image_size=RAW_IMAGE_SIZE)
        except (OSError, ValueError) as err:
            raise StageFailed(f"stage 'raw data' failed writing {raw}: {err}") from err
        seconds["raw data"] = time.perf_counter() - start
        print(
            f"[demo 1/3] {dataset.train_count} train + {dataset.val_count} val images, "
            f"{len(dataset.classes)} classes ({seconds['raw data']:.1f} s)",
            flush=True,
        )

    start = time.perf_counter()
    print(f"[demo 2/3] prepare: {raw} -> {prepared} (log: {logs / 'prepare.log'})", flush=True)
    run_stage(
        "prepare",
        prepare_command(raw, prepared, options.dataset),
        logs / "prepare.log",
        env=env,
        echo=options.echo,
    )
    seconds["prepare"] = time.perf_counter() - start

    # Each demo trains from scratch: a leftover run dir would otherwise auto-resume and finish at
    # once.
    if run_dir.exists():
        shutil.rmtree(run_dir)
    start = time.perf_counter()
    print(
        f"[demo 3/3] train: {NUM_RANKS} DDP ranks on CPU (gloo), {options.backend} loader, "
        f"run dir {run_dir} (log: {logs / 'train.log'})",
        flush=True,
    )
    output = run_stage(
        "train",
        train_command(options, prepared, run_dir),
        logs / "train.log",
        env=env,
        echo=options.echo,
    )
    seconds["train"] = time.perf_counter() - start
    top1, top5 = parse_final_line(output)
    return DemoResult(
        top1=top1,
        top5=top5,
        chance=100.0 / read_manifest(prepared / "train").num_classes,
        run_dir=run_dir,
        artefacts=find_artefacts(run_dir),
        seconds=seconds,
    )


def report(result: DemoResult) -> str:
    """The closing summary: accuracy against chance, timings, and where each artefact is."""
    lines = [
        "",
        "=" * 72,
        (
            f"demo finished: val top-1 {result.top1:.2f}%  top-5 {result.top5:.2f}%  "
            f"(chance is {result.chance:.0f}%: top-1 is {result.top1 / result.chance:.1f}x chance, "
            f"{result.top1 - result.chance:+.1f} points)"
        ),
        "time: "
        + ", ".join(f"{stage} {value:.0f} s" for stage, value in result.seconds.items())
        + f", total {sum(result.seconds.values()):.0f} s",
        "artefacts:",
    ]
    width = max(len(name) for name in result.artefacts) if result.artefacts else 0
    for name, path in result.artefacts.items():
        lines.append(f"  {name:<{width}}  {path}")
    if "W&B offline run" in result.artefacts:
        lines.append(
            f"upload the W&B run later with:  wandb sync {result.artefacts['W&B offline run']}"
        )
    missing = [name for name in EXPECTED_ARTEFACTS if name not in result.artefacts]
    if missing:
        lines.append(f"not written by this run: {', '.join(missing)} (see {result.run_dir})")
    lines.append("next: real ImageNet on GPUs, see README.md, 'Real ImageNet, end to end'")
    lines.append("=" * 72)
    return "\n".join(lines)


def shortfalls(result: DemoResult, required_top1: float) -> list[str]:
    """Why a finished demo still failed: accuracy below the stated bar, or an artefact missing."""
    problems = []
    if result.top1 < required_top1:
        problems.append(
            f"val top-1 {result.top1:.2f}% is below the required {required_top1:.0f}% "
            f"(chance {result.chance:.0f}%): the run did not learn; see {result.run_dir}"
        )
    missing = [name for name in EXPECTED_ARTEFACTS if name not in result.artefacts]
    if missing:
        problems.append(f"missing artefacts: {', '.join(missing)} (see {result.run_dir})")
    return problems


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
