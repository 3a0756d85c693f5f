"""The one-shot GPU check: the GPU tests, the doctor and the GPU benchmarks on one node, every
result in one folder, in under 8 minutes.

    make gpu-check                                   # GPU_CHECK_OUT=gpu-check-results/
    make gpu-check GPU_WHEELS=/path/to/gpu-wheels    # first installs DALI, webdataset, wandb
    python -m tools.gpu_check --out gpu-check-results --wheels gpu-wheels
    python -m tools.gpu_check --out /tmp/check --quick   # no GPU here: the CPU mode CI runs

It runs on the node's own Python and torch (no uv, no network): the repository is put on
PYTHONPATH, and what the node lacks comes from a folder of wheels made by `make gpu-wheels` on a
machine with network (split wheels are joined first), installed with `pip install --no-index`
into the interpreter's site-packages, or into --site (added to PYTHONPATH) where those are
read-only or externally managed.

Parts, in order, each in its own process with its own time limit, each reported as ok, failed
or skipped (with the reason), none able to stop the others:
  install       the wheels from --wheels (skipped without the folder)
  environment   Python, torch, CUDA, the GPU, the driver, and which optional packages import
  gpu-tests     the gpu-marked tests (every one skips, with its reason, without CUDA)
  data          benchmark images from tools/photos as class folders and shards (prepare's layout)
  doctor        python -m pipeline.doctor --quick on configs/alexnet.yaml (tiny.yaml on CPU) and
                that data
  bench-train   tools/bench_train: AlexNet bf16 at batch 256 with channels_last, eager and
                compiled, and the step fed by the DALI mixed loader (its data-wait fraction)
  bench-loader  tools/bench_loader: images/s of every backend, DALI mixed included
Results: OUT/<part>.json (status, seconds, reason, headline, the part's numbers) and
OUT/<part>.log for each; the tools' own output next to them (gpu-tests.xml, doctor-report.json,
bench-train-{eager,compile,loader,cpu}.json, bench-loader-results.json); and OUT/summary.json +
summary.md (the table printed at the end). Exit 0 when no part failed (skipped parts are
fine), else 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tools.gpu_check_parts import (
    REPO,
    Context,
    Part,
    PartFailed,
    PartSkipped,
    part_bench_loader,
    part_bench_train,
    part_data,
    part_doctor,
    part_environment,
    part_gpu_tests,
    part_install,
)

DEFAULT_DATA = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    / "imagenet-pipeline"
    / "gpu-check"
)


PARTS: list[tuple[str, Callable[[Context, Part], None]]] = [
    ("install", part_install),
    ("environment", part_environment),
    ("gpu-tests", part_gpu_tests),
    ("data", part_data),
    ("doctor", part_doctor),
    ("bench-train", part_bench_train),
    ("bench-loader", part_bench_loader),
]


def run_part(context: Context, name: str, function: Callable[[Context, Part], None]) -> Part:
    """One part, whatever happens in it: ok, failed or skipped, with seconds and reason."""
    part = Part(name, "ok")
    started = time.monotonic()
    try:
        function(context, part)
    except PartSkipped as err:
        part.status, part.reason = "skipped", str(err)
    except PartFailed as err:
        part.status, part.reason = "failed", str(err)
    except Exception as err:  # noqa: BLE001 - a broken part must not take the others down
        part.status, part.reason = "failed", f"{type(err).__name__}: {err}"
    part.seconds = round(time.monotonic() - started, 1)
    (context.out / f"{name}.json").write_text(json.dumps(dataclasses.asdict(part), indent=1) + "\n")
    print(f"gpu-check: {name}: {part.status} in {part.seconds:.0f} s", flush=True)
    return part


def format_summary(parts: list[Part], context: Context, started: float) -> str:
    environment = next((p for p in parts if p.name == "environment"), None)
    machine = environment.headline if environment and environment.status == "ok" else "?"
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    quick = " (--quick)" if context.quick else ""
    lines = [
        f"# make gpu-check on {platform.node()}, {when}, {time.monotonic() - started:.0f} s{quick}",
        "",
        f"machine: {machine}",
        "",
        "| part | status | seconds | result |",
        "| --- | --- | --- | --- |",
    ]
    for part in parts:
        result = part.headline if part.status == "ok" else part.reason
        if part.status != "ok" and part.headline:
            result = f"{part.headline}; {part.reason}"
        lines.append(f"| {part.name} | {part.status} | {part.seconds:.0f} | {result} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.gpu_check", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, default=Path("gpu-check-results"), help="results")
    parser.add_argument("--wheels", type=Path, help="the folder `make gpu-wheels` made")
    parser.add_argument(
        "--site",
        type=Path,
        default=REPO / ".gpu-site",
        help="where wheels go when site-packages is read-only (added to PYTHONPATH)",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DATA, help="benchmark data, built once, reused"
    )
    parser.add_argument("--quick", action="store_true", help="small, short runs (CPU mode in CI)")
    parser.add_argument(
        "--budget-s", type=float, default=480.0, help="time for every part together (default 480)"
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=[name for name, _ in PARTS],
        help="run only these parts (default: all)",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    for stale in [*args.out.glob("*.json"), *args.out.glob("*.log"), *args.out.glob("*.xml")]:
        stale.unlink()  # one folder, one run's results
    shutil.rmtree(args.out / "doctor-run", ignore_errors=True)
    env = dict(os.environ)
    env.update({"PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p)
    if args.site.is_dir():
        env["PYTHONPATH"] += os.pathsep + str(args.site.resolve())  # installed by an earlier run
    context = Context(
        out=args.out.resolve(),
        data_dir=args.data_dir.resolve(),
        wheels=args.wheels.resolve() if args.wheels else None,
        site=args.site.resolve(),
        quick=args.quick,
        deadline=started + args.budget_s,
        env=env,
    )
    chosen = set(args.parts or [name for name, _ in PARTS]) | {"environment"}
    parts = [run_part(context, name, fn) for name, fn in PARTS if name in chosen]
    summary = format_summary(parts, context, started)
    (context.out / "summary.md").write_text(summary)
    (context.out / "summary.json").write_text(
        json.dumps(
            {
                "quick": args.quick,
                "cuda": context.cuda,
                "seconds": round(time.monotonic() - started, 1),
                "parts": [dataclasses.asdict(p) for p in parts],
            },
            indent=1,
        )
        + "\n"
    )
    print(summary, end="")
    return 1 if any(part.status == "failed" for part in parts) else 0


if __name__ == "__main__":
    sys.exit(main())
