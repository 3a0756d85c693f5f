"""What a finished demo reports: the final accuracy, the artefacts a run leaves, the closing
summary and the reasons a finished demo still fails."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from tools.demo_runner import StageFailed

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


@dataclasses.dataclass(frozen=True)
class DemoResult:
    top1: float  # percent
    top5: float  # percent
    chance: float  # percent: 100 / number of classes
    run_dir: Path
    artefacts: dict[str, Path]  # what → where, only the ones that exist
    seconds: dict[str, float]  # stage → wall seconds


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
