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

from pipeline.config import Config, config_to_dict, load_config
from pipeline.distributed import (
    CudaProbe,
    barrier,
    broadcast_object,
    init_distributed,
    read_env,
    shutdown,
)
from pipeline.doctor import collectives, environment, probes
from pipeline.doctor.budget import FULL, QUICK
from pipeline.doctor.examine import examine
from pipeline.doctor.report import Check, build_report, format_table, write_report
from pipeline.errors import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE, UserError, first_line
from pipeline.logging_setup import setup_logging


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
    facts = probes.probe_host(cfg, cuda)
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
