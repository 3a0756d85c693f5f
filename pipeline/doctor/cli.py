"""Check that a training config will work on this hardware, and find what will bound its speed.

    python -m pipeline.doctor --config configs/alexnet.yaml \
        data.train_dir=DST/train data.val_dir=DST/val            # one process, this node
    torchrun --nproc_per_node=8 -m pipeline.doctor --config configs/alexnet.yaml ...  # 8 GPUs
    python -m launch --nnodes 4 --rdzv-endpoint node001:29500 \
        -- -m pipeline.doctor --config configs/alexnet.yaml ...  # 4 nodes
    DOCTOR=1 sbatch --nodes=4 slurm/train.sbatch data.train_dir=...   # in place of the trainer
    python -m pipeline.doctor --config configs/tiny.yaml --quick ...   # CI: under a minute on CPU

It takes the same --config and `section.key=value` overrides as `python -m pipeline.train` and
runs on every rank the trainer would: environment, collectives, data, model, then a verdict
naming which of disk, decode, all-reduce and compute bounds the config, and the change that
would move the bound. Rank 0 prints one table and writes RUN_DIR/doctor.json (or --json PATH).

Exit codes: 0 every check passed (warnings allowed), 1 a check failed, a config that cannot
build its model or loaders here included (each failure is one `error: doctor: ...` line on
stderr), 2 a config file or override that does not parse, or a bad argument (one line).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist

from pipeline.config import Config, config_to_dict, load_config
from pipeline.data import resolve_classes
from pipeline.data.base import per_rank_batch_size
from pipeline.distributed import (
    CudaProbe,
    DistInfo,
    barrier,
    broadcast_object,
    init_distributed,
    read_env,
    shutdown,
)
from pipeline.doctor import collectives, data, environment, model
from pipeline.doctor.budget import FULL, QUICK, Budget
from pipeline.doctor.report import Check, build_report, format_table, write_report
from pipeline.doctor.verdict import Inputs, decide
from pipeline.errors import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE, UserError, first_line
from pipeline.logging_setup import setup_logging

logger = logging.getLogger(__name__)

DEFAULT_NUM_CLASSES = 1000  # when the train data cannot be read: ImageNet's


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.doctor",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="YAML config (configs/alexnet.yaml, configs/alexnet_paper.yaml, configs/tiny.yaml)",
    )
    parser.add_argument(
        "--json", type=Path, help="write the report here instead of RUN_DIR/doctor.json"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short measurements (about a second each): a first look, and what CI runs",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="process-group timeout in seconds: how long a rank that cannot reach the others "
        "may stall a collective before the doctor fails (default 300)",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="section.key=value", help="config overrides"
    )
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.doctor` / `imagenet-doctor`; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.timeout <= 0:
        print(f"error: --timeout {args.timeout:g} must be positive seconds", file=sys.stderr)
        return EXIT_USAGE
    try:
        cfg = load_config(args.config, args.overrides)
    except UserError as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    started = time.perf_counter()
    budget = QUICK if args.quick else FULL
    cuda = CudaProbe.read()  # first: torch's own CUDA warning fires only once
    facts = environment.probe_host(cfg, cuda)
    try:
        dist = init_distributed(cfg.train.device, timeout_s=args.timeout, probe=cuda)
    except (RuntimeError, ValueError, UserError) as err:
        return report_start_failure(cfg, args, argv, facts, err, started)
    setup_logging(dist)
    # the loaders log each build at INFO; the doctor builds many, and its table says the rest
    logging.getLogger("pipeline.data").setLevel(logging.WARNING)
    try:
        try:
            checks, verdict, world = examine(cfg, dist, budget, facts, started)
        except RuntimeError as err:  # torch.distributed's DistError is one
            # a collective failed or timed out: the group is unusable, so no table, one line
            print(
                f"error: doctor: rank {dist.rank}/{dist.world_size}: a collective failed "
                f"({type(err).__name__}: {first_line(err)}): check that every rank can reach the "
                "others (NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME, firewalls)",
                file=sys.stderr,
            )
            return EXIT_CHECK_FAILED
        code = EXIT_CHECK_FAILED if any(c.status == "fail" for c in checks) else EXIT_OK
        if dist.is_main:
            code = publish(cfg, args, argv, checks, verdict, world, code, started)
        code = broadcast_object(code, dist)
        barrier(dist)
        return code
    finally:
        shutdown(dist)


def examine(
    cfg: Config, dist: DistInfo, budget: Budget, facts: dict[str, Any], started: float
) -> tuple[list[Check], dict[str, Any], dict[str, Any]]:
    """Every section, in order, on every rank; the checks and the verdict are rank 0's.
    `started` is when the doctor started (the environment section counts from there)."""
    facts |= environment.probe_device(cfg, dist)
    all_facts = gather(facts, dist)
    hosts = [f["host"] for f in all_facts]
    ranks_per_node = max(1, dist.local_world_size)
    world = {
        "world_size": dist.world_size,
        "ranks_per_node": ranks_per_node,
        "nodes": len(collectives.node_groups(dist.world_size, ranks_per_node)),
        "backend": dist.backend,
        "device": dist.device.split(":")[0],
        "hosts": hosts,
        "devices": [f["device"] for f in all_facts],
    }
    checks: list[Check] = []
    clock = SectionClock(started)

    # sizes every section needs: classes, the per-rank batch, the gradient
    try:
        num_classes = len(resolve_classes(cfg))
    except UserError:
        num_classes = cfg.model.num_classes or DEFAULT_NUM_CLASSES  # the data check says why
    num_classes = max(num_classes, cfg.model.num_classes)
    try:
        per_rank_batch: int | None = per_rank_batch_size(cfg, dist)
    except UserError as err:
        per_rank_batch = None
        checks.append(Check("data", "batch", "fail", first_line(err)))
    # the model on the training device (model.sync_bn picks its BatchNorm by device); every rank
    # must have built it before any collective is sized by it
    built: dict[str, Any] = {}
    try:
        step_model = model.build_doctor_model(cfg, num_classes, dist.torch_device)
        built["gradient_numel"] = model.count_gradient_elements(step_model)
        built["parameters"] = sum(p.numel() for p in step_model.parameters())
        built["gradient_shapes"] = [
            list(p.shape) for p in step_model.parameters() if p.requires_grad
        ]
    except (UserError, torch.cuda.OutOfMemoryError) as err:
        step_model = None
        built["error"] = first_line(err)
    everyone = gather(built, dist)
    failed = [(rank, b["error"]) for rank, b in enumerate(everyone) if "error" in b]
    gradient_numel: int | None = None if failed else everyone[0]["gradient_numel"]
    num_parameters: int | None = None if failed else everyone[0]["parameters"]
    gradient_shapes = () if failed else tuple(tuple(s) for s in everyone[0]["gradient_shapes"])
    if failed:
        step_model = None
        rank, error = failed[0]
        checks.append(Check("model", "build", "fail", f"rank {rank}: {error}"))

    checks[:0] = environment.summarize_environment(
        cfg,
        all_facts,
        num_parameters=num_parameters,
        per_rank_batch=per_rank_batch,
        local_world_size=ranks_per_node,
    )
    notes: dict[str, str] = {}
    clock.lap("environment")

    # collectives
    all_reduce_s = None
    inter_node = False
    if gradient_numel is not None:
        timings = gather(collectives.measure_collectives(dist, gradient_numel, budget), dist)
        checks += collectives.summarize_collectives(timings, dist, hosts)
        notes["collectives"] = (
            f"{gradient_numel * 4 / 1e6:.1f} MB of fp32 gradients, {gradient_numel / 1e6:.2f} M "
            "trainable parameters"
        )
        if "world" in timings[0] and not any(t.get("error") for t in timings):
            all_reduce_s = max(t["world"]["median_s"] for t in timings)
            inter_node = "inter_node" in timings[0]
    else:
        checks.append(Check("collectives", "-", "skip", "not measured: the model did not build"))

    clock.lap("collectives")

    # data
    measured = gather(data.measure_data(cfg, dist, budget), dist)
    data_checks, data_summary = data.summarize_data(cfg, measured, ranks_per_node)
    checks += data_checks
    notes["data"] = f"train_dir {cfg.data.train_dir or '(not set)'}" + (
        ", also "
        + ", ".join(
            f"{name} at {path}"
            for name, path in data_summary["layouts"].items()
            if path != str(Path(cfg.data.train_dir).expanduser())
        )
        if len(data_summary["layouts"]) > 1
        else ""
    )

    clock.lap("data")

    # model
    model_summary: dict[str, Any] = {}
    precision = all_facts[0].get("precision")
    if step_model is not None and per_rank_batch is not None:
        steps = gather(
            model.measure_step(cfg, dist, step_model, num_classes, per_rank_batch, budget), dist
        )
        if dist.is_distributed and not any("error" in s for s in steps):
            ddp = model.measure_ddp_step(
                cfg,
                dist,
                step_model,
                num_classes,
                per_rank_batch,
                model.ddp_steps_for(steps, budget),
                budget,
            )
            for entry, extra in zip(steps, gather(ddp, dist)):
                entry |= extra
        model_checks, model_summary = model.summarize_model(cfg, steps, per_rank_batch, precision)
        checks += model_checks
        notes["model"] = (
            f"{cfg.model.arch} ({num_parameters / 1e6:.2f} M parameters), {per_rank_batch} "
            f"images per rank, {precision}, channels_last "
            f"{'on' if cfg.train.channels_last else 'off'}, compile "
            f"{'on' if cfg.train.compile else 'off'}"
        )
    step_model = None  # the device memory goes back before the verdict

    clock.lap("model")

    # verdict
    configured = next(
        (label for label, e in data_summary["decode"].items() if e["configured"]), None
    )
    main_facts = all_facts[0]
    inputs = Inputs(
        world_size=dist.world_size,
        ranks_per_node=ranks_per_node,
        images_per_step=cfg.data.global_batch_size // dist.world_size,
        on_gpu=dist.device.startswith("cuda"),
        dali_importable=main_facts["dali"]["importable"],
        cores_per_rank=main_facts["cpu_count"] / ranks_per_node,
        compute=model_summary.get("images_per_s"),
        ddp=model_summary.get("ddp_images_per_s"),
        decode=data_summary["decode"][configured]["images_per_s"] if configured else None,
        decode_alternatives=data_summary["decode"],
        configured_decode_label=configured,
        node_read_bytes_per_s=data_summary.get("read", {}).get("node_bytes_per_s"),
        bytes_per_image=data_summary.get("read", {}).get("bytes_per_image"),
        layouts=data_summary["layouts"],
        all_reduce_s=all_reduce_s,
        inter_node=inter_node,
        precision=precision,
        peak_memory_gb=model_summary.get("peak_memory_gb"),
        device_memory_gb=model_summary.get("device_memory_gb"),
        gradient_shapes=gradient_shapes,
    )
    verdict, verdict_checks = decide(cfg, inputs)
    checks += verdict_checks
    world["notes"] = notes
    world["section_seconds"] = clock.seconds
    return checks, verdict, world


class SectionClock:
    """Seconds each section took on this rank, logged as it goes (rank 0 logs at INFO)."""

    def __init__(self, started: float) -> None:
        self.seconds: dict[str, float] = {}
        self.last = started

    def lap(self, section: str) -> None:
        now = time.perf_counter()
        self.seconds[section] = round(now - self.last, 2)
        self.last = now
        logger.info("%s: %.1f s", section, self.seconds[section])


def gather(value: Any, dist: DistInfo) -> list[Any]:
    """Every rank's `value` in rank order (pickled; small dicts only)."""
    if not dist.is_distributed:
        return [value]
    gathered: list[Any] = [None] * dist.world_size
    torch_dist.all_gather_object(gathered, value)
    return gathered


def title(cfg_path: Path | None, world: dict[str, Any], quick: bool) -> str:
    backend = world["backend"] or "no process group"
    return (
        f"pipeline.doctor: {cfg_path or 'default config'} on {world['world_size']} rank(s), "
        f"{world['nodes']} node(s), {backend} on {world['device']}"
        f"{' (--quick)' if quick else ''}"
    )


def publish(
    cfg: Config,
    args,
    argv: list[str],
    checks: list[Check],
    verdict: dict[str, Any],
    world: dict[str, Any],
    code: int,
    started: float,
) -> int:
    """Rank 0: the table on stdout, doctor.json, one stderr line per failed check; the exit
    code (EXIT_USAGE when the report cannot be written)."""
    print(format_table(title(args.config, world, args.quick), checks, world.get("notes", {})))
    path = args.json or Path(cfg.train.run_dir) / "doctor.json"
    report = build_report(
        argv=argv,
        quick=args.quick,
        config=config_to_dict(cfg),
        world=world,
        checks=checks,
        verdict=verdict,
        exit_code=code,
        elapsed_s=time.perf_counter() - started,
    )
    try:
        write_report(path, report)
    except OSError as err:
        print(f"error: cannot write the report to {path}: {err.strerror or err}", file=sys.stderr)
        return EXIT_USAGE
    print(f"report: {path} ({report['elapsed_s']:.0f} s)", flush=True)
    for check in checks:
        if check.status == "fail":
            print(f"error: doctor: {check.one_line}", file=sys.stderr)
    return code


def report_start_failure(
    cfg: Config, args, argv: list[str], facts: dict[str, Any], err: BaseException, started: float
) -> int:
    """The device or the process group did not start: the environment as this process sees it,
    the failed check (environment/devices, or collectives/process group when the ranks could not
    meet), and exit 1. Only rank 0 prints the table and writes the report."""
    rank, _, world_size, local_world_size = read_env()
    message = first_line(err)
    # the device's problems are UserErrors (select_device, check_distinct_gpus); anything else
    # came from forming the process group
    rendezvous = not isinstance(err, UserError) or "MASTER_ADDR" in message
    checks = environment.summarize_environment(
        cfg,
        [facts],
        num_parameters=None,
        per_rank_batch=None,
        local_world_size=local_world_size,
        init_error="" if rendezvous else message,
    )
    if rendezvous:
        failed = Check(
            "collectives",
            "process group",
            "fail",
            f"rank {rank} of {world_size} could not form the process group within "
            f"{args.timeout:g} s ({message}): start every rank, and check that MASTER_ADDR:"
            "MASTER_PORT (the rendezvous endpoint) is reachable from each node",
        )
        checks = [c for c in checks if c.name != "precision"] + [failed]
    else:
        failed = next(c for c in checks if c.name == "devices")
    skipped = "not run: the device or the process group did not start"
    checks += [
        Check(section, "-", "skip", skipped)
        for section in ("collectives", "data", "model")
        if not (rendezvous and section == "collectives")
    ]
    world = {
        "world_size": world_size,
        "ranks_per_node": local_world_size,
        "nodes": len(collectives.node_groups(world_size, max(1, local_world_size))),
        "backend": None,
        "device": cfg.train.device,
        "hosts": [facts["host"]],
        "devices": [],
    }
    if rank != 0:
        print(f"error: doctor: rank {rank}: {failed.one_line}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    return publish(cfg, args, argv, checks, {"bound": None}, world, EXIT_CHECK_FAILED, started)
