"""The parts of `make gpu-check` (tools/gpu_check.py): each a function of (Context, Part) that runs
its commands in the node's Python with a time cap, fills in the Part's headline and numbers, and
raises PartSkipped or PartFailed with a one-line reason."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal
from xml.etree import ElementTree

from tools.gpu_install import install_wheels
from tools.gpu_wheels import WheelsError

REPO = Path(__file__).resolve().parent.parent
OPTIONAL_MODULES = {"nvidia.dali": "DALI", "webdataset": "webdataset", "wandb": "wandb"}
TAIL = 4000  # characters of a failed command's output kept in its part's JSON

Status = Literal["ok", "failed", "skipped"]


@dataclasses.dataclass
class Part:
    """One part's outcome: what summary.json and summary.md show, and OUT/<name>.json holds."""

    name: str
    status: Status
    seconds: float = 0.0
    reason: str = ""  # why it failed or was skipped, one line
    headline: str = ""  # its numbers, one line
    results: dict[str, Any] = dataclasses.field(default_factory=dict)
    commands: list[list[str]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Context:
    out: Path
    data_dir: Path
    wheels: Path | None
    site: Path
    quick: bool
    deadline: float  # time.monotonic() by which every part must be done
    env: dict[str, str]
    cuda: bool = False  # the node's torch sees a GPU (the environment part finds out)
    importable: dict[str, str | None] = dataclasses.field(default_factory=dict)
    prepared: Path | None = None  # the data part's DST (train, folders/train)

    def seconds_left(self) -> float:
        return self.deadline - time.monotonic()


class PartSkipped(Exception):
    """Raised by a part that cannot run here; the message is the reason."""


class PartFailed(Exception):
    """Raised by a part whose command failed; the message is the reason."""


def run(context: Context, part: Part, command: list[str], cap_s: float, log_name: str) -> str:
    """Run one command of a part with the smaller of its cap and the time left; its output goes
    to OUT/<log_name>.log, and its stdout is returned. PartFailed on a non-zero exit or a
    timeout."""
    timeout = min(cap_s, context.seconds_left())
    if timeout < 10:
        raise PartSkipped(f"out of the time budget before `{' '.join(command[1:4])}`")
    part.commands.append(command)
    log = context.out / f"{log_name}.log"
    started = time.monotonic()
    try:
        result = subprocess.run(
            command,
            cwd=REPO,
            env=context.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        stdout, code = result.stdout, result.returncode
        output = result.stdout + result.stderr
    except subprocess.TimeoutExpired as err:
        captured = err.stdout or b""  # bytes whatever `text` says
        output = captured.decode(errors="replace") if isinstance(captured, bytes) else captured
        stdout, code = output, None
    with open(log, "a") as handle:
        handle.write(f"$ {' '.join(command)}\n{output}\n")
    if code is None:
        raise PartFailed(f"timed out after {timeout:.0f} s (see {log.name})")
    if code != 0:
        last = [line for line in output.strip().splitlines() if line.strip()][-1:] or ["no output"]
        part.results.setdefault("output_tail", output[-TAIL:])
        raise PartFailed(f"exit {code} after {time.monotonic() - started:.0f} s: {last[0][:300]}")
    return stdout


def python_json(context: Context, part: Part, code: str, cap_s: float = 120) -> Any:
    """Run `code` in the node's Python (with the repo on PYTHONPATH); its last line is JSON."""
    output = run(context, part, [sys.executable, "-c", code], cap_s, part.name)
    return json.loads(output.strip().splitlines()[-1])


# -- install ----------------------------------------------------------------------------------
def part_install(context: Context, part: Part) -> None:
    if context.wheels is None:
        raise PartSkipped("no --wheels folder given (GPU_WHEELS=DIR)")
    if not context.wheels.is_dir():
        raise PartSkipped(
            f"GPU_WHEELS={shown(context.wheels)} does not exist: make it with `make gpu-wheels` "
            "on a machine with network; DALI, webdataset and wandb are used only where they "
            "import"
        )
    try:
        done = install_wheels(
            context.wheels, sys.executable, context.site, context.out, context.env
        )
    except WheelsError as err:
        raise PartFailed(str(err)) from None
    except subprocess.CalledProcessError as err:
        tail = ((err.stderr or "") + (err.stdout or "")).strip().splitlines()[-1:] or ["?"]
        raise PartFailed(f"pip install --no-index exited {err.returncode}: {tail[0]}") from None
    part.results |= done
    if done.get("on_pythonpath"):
        add_to_pythonpath(context, context.site)
    where = "site-packages" if not done.get("on_pythonpath") else f"{context.site} (PYTHONPATH)"
    part.headline = f"{', '.join(done.get('requirements', [])) or 'nothing missing'} into {where}"


def shown(path: Path) -> str:
    """`path` relative to the current directory where it is below it (shorter lines)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def add_to_pythonpath(context: Context, path: Path) -> None:
    paths = context.env.get("PYTHONPATH", "").split(os.pathsep)
    if str(path) not in paths:
        context.env["PYTHONPATH"] = os.pathsep.join([p for p in [*paths, str(path)] if p])


# -- environment ------------------------------------------------------------------------------
ENVIRONMENT_PROBE = """
import importlib, json, platform, shutil, subprocess, sys
import torch
facts = {"python": platform.python_version(), "executable": sys.executable,
         "torch": torch.__version__, "torch_cuda_build": torch.version.cuda,
         "cuda_available": torch.cuda.is_available(), "host": platform.node()}
if facts["cuda_available"]:
    facts["gpu"] = torch.cuda.get_device_name(0)
    facts["gpus"] = torch.cuda.device_count()
if shutil.which("nvidia-smi"):
    run = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30)
    facts["driver"] = run.stdout.strip().splitlines()[0] if run.returncode == 0 else None
modules = {}
for name in MODULES:
    try:
        module = importlib.import_module(name)
        modules[name] = str(getattr(module, "__version__", "?"))
    except Exception as err:
        modules[name] = None
facts["importable"] = modules
print(json.dumps(facts))
"""


def part_environment(context: Context, part: Part) -> None:
    code = f"MODULES = {list(OPTIONAL_MODULES)!r}\n{ENVIRONMENT_PROBE}"
    facts = python_json(context, part, code)
    context.cuda = bool(facts["cuda_available"])
    context.importable = facts["importable"]
    part.results |= facts
    device = facts.get("gpu", "no GPU (CPU mode)")
    missing = [OPTIONAL_MODULES[m] for m, version in context.importable.items() if not version]
    part.headline = (
        f"Python {facts['python']}, torch {facts['torch']} (CUDA {facts['torch_cuda_build']}), "
        f"{device}"
        + (f", driver {facts['driver']}" if facts.get("driver") else "")
        + (f"; not importable: {', '.join(missing)}" if missing else "")
    )


# -- gpu tests --------------------------------------------------------------------------------
# every file holding gpu-marked tests (collecting the whole suite would import test-only
# packages the GPU node may lack, such as Hugging Face datasets)
GPU_TEST_PATHS = ("tests/gpu", "tests/train/test_cuda_paths.py", "tests/data/test_backends.py")


def part_gpu_tests(context: Context, part: Part) -> None:
    junit = context.out / "gpu-tests.xml"
    command = [
        sys.executable,
        "-m",
        "pytest",
        *GPU_TEST_PATHS,
        "-m",
        "gpu",
        "-q",
        "-rs",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
    ]
    try:
        run(context, part, command, 240, part.name)
        failure = None
    except PartFailed as err:
        failure = err
    if not junit.is_file():
        raise failure or PartFailed("pytest wrote no junit report")
    part.results |= read_junit(junit)
    counts = part.results["counts"]
    part.headline = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n) or "no tests"
    if failure is not None or counts["failed"] or counts["errors"]:
        first = part.results["failures"][:1]
        raise PartFailed(
            f"{counts['failed'] + counts['errors']} failed"
            + (f": {first[0]['test']}: {first[0]['message']}" if first else f" ({failure})")
        )
    if counts["passed"] == 0 and counts["skipped"]:
        reasons = sorted({skip["message"] for skip in part.results["skips"]})
        raise PartSkipped(f"all {counts['skipped']} tests skipped: {'; '.join(reasons)}")


def read_junit(path: Path) -> dict[str, Any]:
    """Counts, failures and skips (with reasons) from pytest's junit XML."""
    root = ElementTree.parse(path).getroot()
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures, skips = [], []
    for case in root.iter("testcase"):
        test = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = next(iter(case), None)
        tag = outcome.tag if outcome is not None else "passed"
        message = (outcome.get("message", "") if outcome is not None else "").strip()
        message = message.splitlines()[0][:300] if message else ""
        if tag == "failure":
            counts["failed"] += 1
            failures.append({"test": test, "message": message})
        elif tag == "error":
            counts["errors"] += 1
            failures.append({"test": test, "message": message})
        elif tag == "skipped":
            counts["skipped"] += 1
            skips.append({"test": test, "message": message.removeprefix("Skipped: ")})
        else:
            counts["passed"] += 1
    return {"counts": counts, "failures": failures, "skips": skips}


# -- data -------------------------------------------------------------------------------------
def part_data(context: Context, part: Part) -> None:
    images = 256 if context.quick else 4096
    code = (
        "import json\nfrom pathlib import Path\n"
        "from tools.bench_loader import DEFAULT_PHOTOS, build_dataset\n"
        f"root = build_dataset(DEFAULT_PHOTOS, Path({str(context.data_dir)!r}), {images})\n"
        "print(json.dumps(str(root)))"
    )
    root = Path(python_json(context, part, code, cap_s=180))
    # prepare's layout over the same files: DST/train (shards), DST/folders/train
    prepared = context.data_dir / f"prepared-{images}"
    (prepared / "folders").mkdir(parents=True, exist_ok=True)
    for link, target in (
        (prepared / "train", root / "shards" / "train"),
        (prepared / "folders" / "train", root / "folders" / "train"),
    ):
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target.resolve(), target_is_directory=True)
    context.prepared = prepared
    part.results |= {"images": images, "root": str(root), "prepared": str(prepared)}
    part.headline = (
        f"{images} images from tools/photos as shards and class folders in {shown(prepared)}"
    )


def workers_for(context: Context) -> int:
    cores = len(os.sched_getaffinity(0))
    return 1 if context.quick and not context.cuda else max(1, min(8, cores - 1))


def need_data(context: Context) -> Path:
    if context.prepared is None:
        raise PartSkipped("no benchmark data: the data part did not finish")
    return context.prepared


# -- doctor -----------------------------------------------------------------------------------
def part_doctor(context: Context, part: Part) -> None:
    prepared = need_data(context)
    report = context.out / "doctor-report.json"  # doctor.json is the part's own record
    backend = "wds" if context.importable.get("webdataset") else "folder"
    train_dir = prepared / "train" if backend == "wds" else prepared / "folders" / "train"
    command = [sys.executable, "-m", "pipeline.doctor"]
    if context.cuda:
        command += ["--config", "configs/alexnet.yaml"]
    else:
        command += ["--config", "configs/tiny.yaml", "data.global_batch_size=32"]
    command += [
        f"data.backend={backend}",
        f"data.train_dir={train_dir}",
        f"data.num_workers={workers_for(context)}",
        f"train.run_dir={context.out / 'doctor-run'}",
        f"--json={report}",
        "--quick",  # a second or two per measurement: the 8 minutes go to the benchmarks
    ]
    try:
        run(context, part, command, 200, part.name)
        failure = None
    except PartFailed as err:
        failure = err
    if not report.is_file():
        raise failure or PartFailed("the doctor wrote no report")
    doctor = json.loads(report.read_text())
    verdict = doctor.get("verdict", {})
    part.results |= {"report": report.name, "status": doctor["status"], "verdict": verdict}
    rates = verdict.get("rates_images_per_s_per_rank") or {}
    part.headline = (
        f"bound: {verdict.get('bound')} ("
        + ", ".join(f"{name} {rate:.0f}" for name, rate in rates.items() if rate)
        + " images/s per rank)"
    )
    if doctor["failures"]:
        raise PartFailed(f"{len(doctor['failures'])} failed check(s): {doctor['failures'][0]}")
    if failure is not None:
        raise failure


# -- benchmarks -------------------------------------------------------------------------------
def part_bench_train(context: Context, part: Part) -> None:
    prepared = need_data(context)
    base = [sys.executable, "-m", "tools.bench_train"]
    runs: list[tuple[str, list[str]]] = []
    if context.cuda:
        gpu = ["--precision", "bf16", "--channels-last", "--batch-size", "256"]
        runs.append(("eager", [*gpu, "--skip", "loader", "ddp"]))
        runs.append(("compile", [*gpu, "--compile", "--skip", "loader", "ddp"]))
        if context.importable.get("nvidia.dali"):
            feed = [
                "--backend",
                "dali",
                "--dali-decode",
                "mixed",
                "--data",
                str(prepared / "train"),
            ]
        else:
            part.results["loader_note"] = "DALI is not importable: the loader run uses wds"
            feed = ["--backend", "wds", "--data", str(prepared / "train")]
        # 4096 images are 16 batches of 256: 3 warm-up + 12 timed steps fit in one epoch
        loader = [*gpu, *feed, "--num-workers", str(workers_for(context)), "--warmup", "3"]
        runs.append(("loader", [*loader, "--steps", "12", "--skip", "step", "ddp"]))
    else:
        steps = ["--steps", "3", "--warmup", "1"] if context.quick else []
        data = ["--data", str(prepared / "folders" / "train"), "--backend", "folder"]
        workers = ["--num-workers", str(workers_for(context))]
        runs.append(("cpu", [*steps, *data, *workers, "--skip", "ddp"]))
    failures = []
    for name, arguments in runs:
        target = context.out / f"bench-train-{name}.json"
        try:
            run(context, part, [*base, *arguments, "--json", str(target)], 240, part.name)
            part.results[name] = json.loads(target.read_text())
        except PartFailed as err:
            failures.append(f"{name}: {err}")
    part.headline = bench_train_headline(part.results)
    if failures:
        raise PartFailed("; ".join(failures))


def bench_train_headline(results: dict[str, Any]) -> str:
    pieces = []
    for name in ("eager", "compile", "cpu"):
        if name in results and results[name].get("step_images_per_s"):
            pieces.append(f"{name} step {results[name]['step_images_per_s']:.0f} images/s")
    for name in ("loader", "cpu"):
        loader = results.get(name, {}).get("loader")
        if loader:
            pieces.append(
                f"{loader['backend']} loader -> step {loader['images_per_s']:.0f} images/s, data "
                f"wait {100 * loader['data_wait_frac']:.1f}%"
            )
    return "; ".join(pieces)


def part_bench_loader(context: Context, part: Part) -> None:
    need_data(context)
    target = context.out / "bench-loader-results.json"  # bench-loader.json: the part's record
    # folder/wds under `auto` (processes beyond 6 workers) and forced to threads (the pinned,
    # lent ring copied straight to the GPU), beside one core's decode
    backends = ["baseline", "decode", "folder", "folder-threads", "wds", "wds-threads"]
    backends += ["dali-cpu", "dali-mixed"]
    skipped = {}
    if not context.importable.get("nvidia.dali"):
        skipped |= {"dali-cpu": "DALI not importable", "dali-mixed": "DALI not importable"}
    elif not context.cuda:
        skipped["dali-mixed"] = "needs CUDA"
    if not context.importable.get("webdataset"):
        skipped["wds"] = skipped["wds-threads"] = "webdataset not importable"
    backends = [b for b in backends if b not in skipped]
    images = 256 if context.quick else 4096
    shape = (
        ["--seconds", "1", "--rounds", "1", "--batch-size", "32"]
        if context.quick
        else ["--seconds", "6", "--rounds", "1", "--batch-size", "128"]
    )
    command = [
        sys.executable,
        "-m",
        "tools.bench_loader",
        "--images",
        str(images),
        "--cache-dir",
        str(context.data_dir),
        "--workers",
        str(workers_for(context)),
        *shape,
        "--backends",
        *backends,
        "--json",
        str(target),
    ]
    run(context, part, command, 180, part.name)
    # bench_loader keys its rows "backend@size"; this part runs one size (its default, 224)
    measured = {row["backend"]: row for row in json.loads(target.read_text())["results"].values()}
    part.results |= {
        "images_per_s": {k: round(v["images_per_s"], 1) for k, v in measured.items()},
        "cpu_ms_per_image": {k: round(v["cpu_ms_per_image"], 3) for k, v in measured.items()},
        "skipped": skipped,
    }
    if "dali-mixed" in measured:
        # NVIDIA's ImageNet settings of the mixed decoder (pipeline/data/dali/graph.py)
        from pipeline.data.dali.graph import MIXED_DECODER_OPTIONS, PREFETCH_QUEUE_DEPTH

        part.results["dali_mixed_settings"] = MIXED_DECODER_OPTIONS | {
            "prefetch_queue_depth": PREFETCH_QUEUE_DEPTH
        }
    part.headline = ", ".join(
        [
            f"{k} {v['images_per_s']:.0f} images/s ({v['cpu_ms_per_image']:.2f} CPU ms/image)"
            for k, v in measured.items()
        ]
        + [f"{k} skipped ({reason})" for k, reason in skipped.items()]
    )
