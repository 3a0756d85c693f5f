"""Preflight: form the world, do one all-reduce across every rank, report what was found.

    python -m torch.distributed.run --standalone --nproc-per-node=2 -m launch.preflight
    python -m launch --nproc 2 -- -m pipeline.train ...   # runs this first by itself

Prints (rank 0) one line such as
    preflight ok: world_size=2 backend=gloo nodes=1 all_reduce=2 | node 0 vm: ranks 0-1 cpu, cpu
and exits 0, or exits 1 with the reason. The process group's timeout (--timeout) bounds how long
a missing or unreachable rank can stall the all-reduce; forming the world in the first place is
bounded by torchrun's rendezvous timeouts, which launch/torchrun.py sets.

With --report-file, local rank 0 of each node writes {"stage": "started"} there before joining
the process group and the full report with {"stage": "done"} after the all-reduce, so the
launcher can tell "the rendezvous never formed" (no file) from "the all-reduce failed".
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as torch_dist

from pipeline.distributed import DistInfo, all_reduce_sum, init_distributed, read_env, shutdown

logger = logging.getLogger(__name__)


def describe_device(dist: DistInfo) -> str:
    """'cuda:0 NVIDIA H100 80GB HBM3' or 'cpu'."""
    if dist.device.startswith("cuda"):
        return f"{dist.device} {torch.cuda.get_device_name(dist.torch_device)}"
    return "cpu"


def gather_rank_info(dist: DistInfo) -> list[dict]:
    """Every rank's host, local rank and device, in rank order."""
    mine = {
        "rank": dist.rank,
        "local_rank": dist.local_rank,
        "host": socket.gethostname(),
        "device": describe_device(dist),
    }
    if not dist.is_distributed:
        return [mine]
    gathered: list[dict | None] = [None] * dist.world_size
    torch_dist.all_gather_object(gathered, mine)
    return [info for info in gathered if info is not None]


def summarize(
    dist: DistInfo, ranks: list[dict], reduced: float, seconds: float, gloo_seconds: float
) -> dict:
    """The report: world, backend, and per node (ranks are contiguous per node under torchrun)."""
    nodes = []
    per_node = max(dist.local_world_size, 1)
    for start in range(0, len(ranks), per_node):
        members = ranks[start : start + per_node]
        nodes.append(
            {
                "node": start // per_node,
                "host": members[0]["host"],
                "ranks": [m["rank"] for m in members],
                "devices": [m["device"] for m in members],
            }
        )
    return {
        "stage": "done",
        "world_size": dist.world_size,
        "backend": dist.backend or "none (world of one)",
        "all_reduce": reduced,
        "all_reduce_s": round(seconds, 4),
        "gloo_all_reduce_s": round(gloo_seconds, 4),
        "nodes": nodes,
    }


def format_report(report: dict) -> str:
    head = (
        f"preflight ok: world_size={report['world_size']} backend={report['backend']} "
        f"nodes={len(report['nodes'])} all_reduce={report['all_reduce']:g} "
        f"({report['all_reduce_s'] * 1000:.1f} ms, gloo side group "
        f"{report['gloo_all_reduce_s'] * 1000:.1f} ms)"
    )
    parts = [head]
    for node in report["nodes"]:
        ranks = node["ranks"]
        span = f"{ranks[0]}-{ranks[-1]}" if len(ranks) > 1 else str(ranks[0])
        parts.append(
            f"node {node['node']} {node['host']}: ranks {span} {', '.join(node['devices'])}"
        )
    return " | ".join(parts)


def run_preflight(device: str, timeout_s: float, report_file: Path | None) -> dict:
    """Join the process group, all-reduce ones, check the sum is the world size; the report."""
    _, local_rank, _, _ = read_env()
    if report_file is not None and local_rank == 0:
        report_file.write_text(json.dumps({"stage": "started"}))
    dist = init_distributed(device, timeout_s=timeout_s)
    try:
        ones = torch.ones(1, device=dist.torch_device)
        started = time.perf_counter()
        reduced = float(all_reduce_sum(ones, dist).item())
        seconds = time.perf_counter() - started
        if reduced != dist.world_size:
            raise RuntimeError(
                f"all-reduce of ones gave {reduced:g}, expected the world size {dist.world_size}"
            )
        # the trainer's gloo side group (its per-step stop flag) may pick a network interface
        # other nodes cannot reach even when nccl works: all-reduce on a gloo group too
        gloo = torch_dist.new_group(backend="gloo") if dist.is_distributed else None
        started = time.perf_counter()
        gloo_reduced = torch.ones(1)
        if gloo is not None:
            torch_dist.all_reduce(gloo_reduced, group=gloo)
        gloo_seconds = time.perf_counter() - started
        if float(gloo_reduced.item()) != (dist.world_size if gloo is not None else 1):
            raise RuntimeError(
                f"gloo all-reduce of ones gave {float(gloo_reduced.item()):g}, expected the "
                f"world size {dist.world_size}"
            )
        ranks = gather_rank_info(dist)
        report = summarize(dist, ranks, reduced, seconds, gloo_seconds)
        if dist.is_main:
            print(format_report(report), flush=True)
        if report_file is not None and dist.local_rank == 0:
            report_file.write_text(json.dumps(report))
        return report
    finally:
        shutdown(dist)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m launch.preflight", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--device",
        choices=["auto", "cuda", "cpu"],
        default="auto",
        help="auto: nccl on CUDA when present, else gloo on CPU",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="process-group timeout in seconds: bounds the all-reduce (default 120)",
    )
    parser.add_argument(
        "--report-file",
        type=Path,
        default=None,
        help="local rank 0 writes the JSON report here (used by python -m launch)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="preflight: %(levelname)s %(message)s")
    try:
        run_preflight(args.device, args.timeout, args.report_file)
    except Exception as err:  # noqa: BLE001 - any failure here is reported as one line per rank
        rank, _, world_size, _ = read_env()
        print(
            f"error: preflight rank {rank}/{world_size} failed: {type(err).__name__}: {err}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
