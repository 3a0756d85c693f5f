"""Collectives: all-reduce bus bandwidth at the configured model's gradient size, on every group
the run uses, and the slowest link.

    measured = measure_collectives(dist, gradient_numel, budget)   # every rank, same order
    checks = summarize_collectives(per_rank, dist)                  # rank 0

What is timed (each a median over the budget's iterations, every rank starting together):
  * the world group on the training backend (nccl on GPU, gloo on CPU): one all-reduce of the
    whole fp32 gradient, what DDP moves per optimizer step (in 25 MB buckets, overlapped with
    the backward pass);
  * within each node and, with several nodes, across them (one group per local rank, all at
    once, as a hierarchical all-reduce loads the network);
  * the gloo side group the trainer makes on nccl runs (the per-step stop flag): the same size,
    on CPU tensors, over the interface gloo picks (GLOO_SOCKET_IFNAME), which can differ from
    NCCL's;
  * a ring shift (each rank sends to rank+1 and receives from rank-1, and across nodes to
    rank+ranks_per_node), whose slowest receiver names the slowest rank and link.

Bus bandwidth is nccl-tests' definition: bytes / time x 2(n-1)/n for an all-reduce over n ranks,
comparable across group sizes and with the link's rated bandwidth. The sum is also checked: a
buffer of ones must come back as n everywhere.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as torch_dist

from pipeline.distributed import DistInfo, side_group, synchronize
from pipeline.doctor.report import Check

GB = 1e9
RING_MAX_ELEMENTS = 16 * 2**20  # 64 MB of fp32 per ring message


def start_line(group, device: torch.device) -> None:
    """Every rank of `group` leaves here at about the same time (a 1-element all-reduce)."""
    flag = torch.ones(1, device=device)
    torch_dist.all_reduce(flag, group=group)
    synchronize(device)


def time_collective(
    run: Callable[[], None], group, device: torch.device, warmup: int, iterations: int
) -> list[float]:
    """Seconds of each timed call of `run` (a collective on `group`), after `warmup` calls."""
    seconds = []
    for index in range(warmup + iterations):
        start_line(group, device)
        started = time.perf_counter()
        run()
        synchronize(device)
        if index >= warmup:
            seconds.append(time.perf_counter() - started)
    return seconds


def all_reduce_timing(
    numel: int, group, group_size: int, device: torch.device, warmup: int, iterations: int
) -> dict[str, Any]:
    """Time a SUM all-reduce of `numel` fp32 ones on `group`; check the sum is the group size."""
    buffer = torch.empty(numel, dtype=torch.float32, device=device)

    def run() -> None:
        buffer.fill_(1.0)
        torch_dist.all_reduce(buffer, group=group)

    # fill_ is inside the timed call but costs ~1% of the all-reduce's memory traffic
    seconds = time_collective(run, group, device, warmup, iterations)
    probe = buffer[:: max(1, numel // 8)].cpu()
    correct = bool(torch.all(probe == group_size))
    return {
        "group_size": group_size,
        "median_s": statistics.median(seconds),
        "seconds": [round(s, 6) for s in seconds],
        "correct_sum": correct,
    }


def ring_timing(
    numel: int, shift: int, dist: DistInfo, device: torch.device, warmup: int, iterations: int
) -> dict[str, Any]:
    """Each rank sends `numel` fp32 to rank+shift and receives from rank-shift, all at once."""
    send = torch.ones(numel, dtype=torch.float32, device=device)
    receive = torch.empty_like(send)
    peer_to = (dist.rank + shift) % dist.world_size
    peer_from = (dist.rank - shift) % dist.world_size

    def run() -> None:
        operations = [
            torch_dist.P2POp(torch_dist.isend, send, peer_to),
            torch_dist.P2POp(torch_dist.irecv, receive, peer_from),
        ]
        for request in torch_dist.batch_isend_irecv(operations):
            request.wait()

    seconds = time_collective(run, None, device, warmup, iterations)
    return {"from": peer_from, "bytes": numel * 4, "median_s": statistics.median(seconds)}


def agree(ok: bool, device: torch.device) -> bool:
    """True on every rank when `ok` is true on every rank (a MIN all-reduce)."""
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=device)
    torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MIN)
    return bool(flag.item())


def node_groups(world_size: int, ranks_per_node: int) -> list[list[int]]:
    """Ranks per node: contiguous blocks, as torchrun and srun's block distribution number them."""
    return [
        list(range(start, min(start + ranks_per_node, world_size)))
        for start in range(0, world_size, ranks_per_node)
    ]


def measure_collectives(dist: DistInfo, gradient_numel: int, budget) -> dict[str, Any]:
    """This rank's timings; a collective sequence every rank runs in the same order."""
    result: dict[str, Any] = {"rank": dist.rank, "gradient_bytes": gradient_numel * 4}
    if not dist.is_distributed:
        return result
    device = dist.torch_device
    warmup, iterations = budget.collective_warmup, budget.collective_iterations
    try:
        torch.empty(gradient_numel, dtype=torch.float32, device=device)  # does it fit at all?
        fits = True
    except (torch.cuda.OutOfMemoryError, RuntimeError):  # CUDA, or the CPU allocator
        fits = False
    if not agree(fits, device):
        result["error"] = "a rank could not allocate the gradient-sized buffer"
        return result
    result["world"] = all_reduce_timing(
        gradient_numel, None, dist.world_size, device, warmup, iterations
    )
    per_node = max(1, dist.local_world_size)
    nodes = node_groups(dist.world_size, per_node)
    result["nodes"] = len(nodes)
    if len(nodes) > 1:
        mine, _ = torch_dist.new_subgroups_by_enumeration(nodes)
        result["intra_node"] = all_reduce_timing(
            gradient_numel, mine, len(nodes[dist.rank // per_node]), device, warmup, iterations
        )
        if all(len(node) == per_node for node in nodes):
            across = [[node[local] for node in nodes] for local in range(per_node)]
            mine, _ = torch_dist.new_subgroups_by_enumeration(across)
            result["inter_node"] = all_reduce_timing(
                gradient_numel, mine, len(nodes), device, warmup, iterations
            )
    if dist.backend == "nccl":
        side = side_group(dist)  # the trainer's (pipeline/train/signals.py): gloo, CPU tensors
        result["gloo_side"] = all_reduce_timing(
            gradient_numel,
            side,
            dist.world_size,
            torch.device("cpu"),
            min(warmup, 1),
            budget.gloo_iterations,
        )
    ring_numel = min(gradient_numel, RING_MAX_ELEMENTS)
    result["ring"] = ring_timing(ring_numel, 1, dist, device, warmup, iterations)
    if len(nodes) > 1:
        result["ring_across_nodes"] = ring_timing(
            ring_numel, per_node, dist, device, warmup, iterations
        )
    return result


def bus_bandwidth(gradient_bytes: int, timing: dict[str, Any]) -> float:
    """nccl-tests' all-reduce bus bandwidth, GB/s."""
    size = timing["group_size"]
    return gradient_bytes / timing["median_s"] * 2 * (size - 1) / size / GB


def summarize_collectives(
    per_rank: list[dict[str, Any]], dist: DistInfo, hosts: list[str]
) -> list[Check]:
    """Rank 0's checks from every rank's timings (rank order)."""
    main = per_rank[0]
    size = main["gradient_bytes"]
    backend = dist.backend or "none"
    if not dist.is_distributed:
        return [
            Check(
                "collectives",
                "all-reduce",
                "skip",
                "world of one: DDP does no all-reduce (start several ranks to measure it)",
                {"gradient_bytes": size},
            )
        ]
    errors = [r["error"] for r in per_rank if r.get("error")]
    if errors:
        return [Check("collectives", "all-reduce", "fail", errors[0], {"gradient_bytes": size})]
    checks = [group_check("all-reduce", backend, size, [r["world"] for r in per_rank], "all ranks")]
    checks += node_checks(per_rank, backend, size, hosts)
    if "gloo_side" in main:
        checks.append(
            group_check("gloo side group", "gloo", size, [r["gloo_side"] for r in per_rank], "CPU")
        )
    else:
        checks.append(
            Check(
                "collectives",
                "gloo side group",
                "info",
                "the training backend is gloo: the all-reduce above is gloo's",
            )
        )
    checks.append(slowest_link(per_rank, hosts))
    return checks


def node_checks(
    per_rank: list[dict[str, Any]], backend: str, size: int, hosts: list[str]
) -> list[Check]:
    """Within and across nodes: the node groups' all-reduces, or why they were not measured."""
    main = per_rank[0]
    checks = []
    if main["nodes"] > 1:
        checks.append(
            group_check(
                "within nodes", backend, size, [r["intra_node"] for r in per_rank], "slowest node"
            )
        )
        if "inter_node" in main:
            checks.append(
                group_check(
                    "across nodes",
                    backend,
                    size,
                    [r["inter_node"] for r in per_rank],
                    "one rank per node, all local ranks at once",
                )
            )
        else:
            checks.append(
                Check("collectives", "across nodes", "skip", "nodes hold different rank counts")
            )
    else:
        checks.append(
            Check(
                "collectives",
                "across nodes",
                "skip",
                f"one node ({hosts[0]}): the all-reduce above is within it",
            )
        )
    return checks


def group_check(
    name: str, backend: str, gradient_bytes: int, timings: list[dict[str, Any]], scope: str
) -> Check:
    """The slowest rank's view of one group's all-reduce (they wait for each other)."""
    slowest = max(range(len(timings)), key=lambda rank: timings[rank]["median_s"])
    timing = timings[slowest]
    bandwidth = bus_bandwidth(gradient_bytes, timing)
    values = {
        "backend": backend,
        "gradient_bytes": gradient_bytes,
        "group_size": timing["group_size"],
        "median_s": timing["median_s"],
        "bus_gb_per_s": round(bandwidth, 3),
        "slowest_rank": slowest,
        "per_rank_median_s": [round(t["median_s"], 6) for t in timings],
    }
    wrong = [rank for rank, t in enumerate(timings) if not t["correct_sum"]]
    if wrong:
        return Check(
            "collectives",
            name,
            "fail",
            f"{backend} all-reduce returned a wrong sum on ranks {wrong}: check the GPUs and "
            "NCCL_* settings",
            values,
        )
    return Check(
        "collectives",
        name,
        "ok",
        f"{backend}, {timing['group_size']} ranks ({scope}): {bandwidth:.2f} GB/s bus, "
        f"{1000 * timing['median_s']:.1f} ms per {gradient_bytes / 1e6:.1f} MB all-reduce",
        values,
    )


def slowest_link(per_rank: list[dict[str, Any]], hosts: list[str]) -> Check:
    """The rank that receives slowest in the ring shifts, named with its host and sender."""
    links = []
    for rank, result in enumerate(per_rank):
        for key in ("ring", "ring_across_nodes"):
            if key in result:
                ring = result[key]
                links.append((ring["bytes"] / ring["median_s"] / GB, rank, ring["from"], key))
    bandwidth, rank, sender, key = min(links)
    fastest = max(link[0] for link in links)
    values = {
        "rank": rank,
        "host": hosts[rank],
        "from_rank": sender,
        "gb_per_s": round(bandwidth, 3),
        "fastest_gb_per_s": round(fastest, 3),
        "links": [
            {"rank": r, "from": f, "kind": k, "gb_per_s": round(b, 3)} for b, r, f, k in links
        ],
    }
    status = "warn" if len(links) > 2 and bandwidth < 0.5 * fastest else "ok"
    return Check(
        "collectives",
        "slowest link",
        status,
        f"rank {rank} ({hosts[rank]}) receiving from rank {sender}: {bandwidth:.2f} GB/s "
        f"(fastest link {fastest:.2f} GB/s)",
        values,
    )
