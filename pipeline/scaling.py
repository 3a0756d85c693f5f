"""Predicted step time and scaling efficiency of data-parallel training on N nodes x G GPUs for
each gradient hook (train.comm_hook), and which hook to pick. docs/comm.md's tables come from
here, and `python -m pipeline.doctor` names a hook with `recommend_hook(...).verdict`.

    from pipeline import scaling
    shapes = [tuple(p.shape) for p in model.parameters()]
    p = scaling.predict(scaling.gradient_payload(shapes, "none"), compute_s=3.1e-3, nodes=4,
                        gpus_per_node=8, link_gbps=100, hook="bf16")
    p.step_s, p.efficiency, p.exposed_comm_s
    r = scaling.recommend_hook(model_bytes, 3.1e-3, 4, 8, 100,
                               powersgd_bytes=scaling.gradient_payload(shapes, "powersgd"))
    r.hook, r.comm_bound, r.verdict

    python -m pipeline.scaling                          # docs/comm.md's tables (AlexNet, H100)
    python -m pipeline.scaling --model resnet50 --compute-ms 15.7 --links 100 400

The model, each constant an argument with its provenance below:
  payload S   bytes each rank all-reduces per step: the fp32 gradients (none), half that
              (fp16, bf16), or PowerSGD's P and Q of the compressed matrices plus every other
              element (powersgd; pipeline/comm.py's rule). bench_comm measures these on the wire.
  all-reduce  bandwidth bound of a hierarchical all-reduce, which NCCL's rings and trees approach:
              2(G-1)/G * S / B_nvlink inside a node plus 2(N-1)/N * S / B_node between nodes
              (B_node = link_gbps: all of a node's NICs together), plus a latency per collective
              (one per bucket; PowerSGD three per compressed bucket: the uncompressed part, P, Q).
  hook compute  GPU memory traffic of the hook (casts; PowerSGD's error feedback, copy and three
              skinny matmuls over each compressed matrix) over HBM bandwidth. It runs on the
              compute stream, so it adds to the step.
  overlap     DDP all-reduces each bucket as its gradients become ready in backward; AlexNet's
              FC gradients (95% of its bytes) are ready first, before the conv backward that is
              most of the FLOPs. Up to `overlap` x backward (2/3 of the step's compute) hides it.
  step        compute + hook compute + max(0, all-reduce - overlap x backward)
  efficiency  compute / step: per-GPU throughput against one GPU that all-reduces nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Sequence

HOOKS = ("none", "fp16", "bf16", "powersgd")
# accuracy risk, least first: among hooks within `tolerance` of the fastest step, pick the first
RISK_ORDER = ("none", "bf16", "fp16", "powersgd")

# H100 SXM: 989 TFLOP/s dense bf16 (NVIDIA's datasheet), HBM3 3.35 TB/s of which ~75% is reached by
# streaming kernels, NVLink 4 at 450 GB/s per direction of which NCCL's all-reduce bus bandwidth
# reaches ~300 GB/s (2400 Gb/s) on 8 GPUs. Latencies: NCCL small-message all-reduce, ~10 us in a
# node plus ~5 us per tree level across nodes.
H100_PEAK_FLOPS = 989e12
HBM_BYTES_PER_S = 2.5e12
NVLINK_GBPS = 2400.0
LATENCY_IN_NODE_S = 10e-6
LATENCY_PER_TREE_LEVEL_S = 5e-6
DEFAULT_MFU = 0.35  # model FLOP utilisation assumed for a derived compute time (not measured)
DEFAULT_OVERLAP = 0.8
# GPU memory bytes a hook moves per gradient element (fp32 gradients). none: DDP's divide by the
# world size (read + write). fp16/bf16: cast down (4 + 2), divide (2 + 2), cast back (2 + 4).
# powersgd, per element of a compressed matrix: error add (4 + 4 + 4), copy (4 + 4), M Q and
# M^T P (4 + 4), P Q^T (4), new error (4 + 4 + 4); the uncompressed rest as none.
HOOK_BYTES_PER_ELEMENT = {"none": 8, "fp16": 16, "bf16": 16, "powersgd": 44}

# FLOPs per 224 px image, forward + backward, counted with torch.utils.flop_counter on the
# torchvision layouts (2 FLOPs per multiply-add; 2026-12-01, torch 2.13)
TRAIN_FLOPS_PER_IMAGE = {"alexnet": 4.145e9, "resnet50": 24.30e9}


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One configuration's predicted step; times in seconds, per optimizer step."""

    hook: str
    nodes: int
    gpus_per_node: int
    link_gbps: float
    payload_bytes: float  # each rank's all-reduce payload
    compute_s: float  # forward + backward + optimizer on one GPU
    hook_compute_s: float
    comm_s: float  # the all-reduce, bandwidth + latency
    exposed_comm_s: float  # what backward does not hide
    step_s: float
    efficiency: float  # compute_s / step_s

    @property
    def comm_fraction(self) -> float:
        """Share of the step spent beyond compute: waiting on the all-reduce and in the hook."""
        return (self.step_s - self.compute_s) / self.step_s


@dataclasses.dataclass(frozen=True)
class Recommendation:
    hook: str
    comm_bound: bool  # under `none`, the all-reduce takes at least `bound_fraction` of the step
    predictions: dict[str, Prediction]
    verdict: str  # one line, for the doctor


def gradient_payload(
    shapes: Sequence[Sequence[int]],
    hook: str,
    *,
    powersgd_rank: int = 4,
    powersgd_min_elements: int = 1_000_000,
    element_bytes: int = 4,
) -> int:
    """Bytes each rank hands to all-reduce per step for gradients of these shapes under `hook`
    (PowerSGD after its warm-up)."""
    from pipeline.powersgd import powersgd_payload_elements  # the one copy of PowerSGD's rule

    elements = sum(math.prod(shape) for shape in shapes)
    if hook == "none":
        return elements * element_bytes
    if hook in ("fp16", "bf16"):
        return elements * 2
    if hook == "powersgd":
        shapes = [tuple(shape) for shape in shapes]
        return (
            powersgd_payload_elements(shapes, powersgd_rank, powersgd_min_elements) * element_bytes
        )
    raise ValueError(f"hook {hook!r} is not one of {', '.join(HOOKS)}")


def compute_from_flops(
    flops_per_sample: float,
    batch_per_gpu: int,
    peak_flops: float = H100_PEAK_FLOPS,
    mfu: float = DEFAULT_MFU,
) -> float:
    """Seconds of GPU compute per step derived from FLOPs, at `mfu` of `peak_flops`."""
    return flops_per_sample * batch_per_gpu / (peak_flops * mfu)


def all_reduce_seconds(
    payload_bytes: float,
    nodes: int,
    gpus_per_node: int,
    link_gbps: float,
    *,
    collectives: int = 1,
    nvlink_gbps: float = NVLINK_GBPS,
) -> float:
    """A hierarchical all-reduce of `payload_bytes` per rank, in `collectives` calls."""
    inside = 2 * (gpus_per_node - 1) / gpus_per_node * payload_bytes / (nvlink_gbps / 8 * 1e9)
    across = 2 * (nodes - 1) / nodes * payload_bytes / (link_gbps / 8 * 1e9)
    levels = math.ceil(math.log2(nodes)) if nodes > 1 else 0
    ranks = nodes * gpus_per_node
    latency = 0.0 if ranks == 1 else LATENCY_IN_NODE_S + 2 * levels * LATENCY_PER_TREE_LEVEL_S
    return inside + across + collectives * latency


def predict(
    model_bytes: float,
    compute_s: float,
    nodes: int,
    gpus_per_node: int,
    link_gbps: float,
    hook: str,
    *,
    powersgd_bytes: float | None = None,
    compressed_fraction: float = 1.0,
    bucket_mb: float = 25.0,
    overlap: float = DEFAULT_OVERLAP,
    nvlink_gbps: float = NVLINK_GBPS,
    hbm_bytes_per_s: float = HBM_BYTES_PER_S,
    hook_compute_s: float | None = None,
) -> Prediction:
    """The predicted step of one configuration.

    Args:
        model_bytes: fp32 gradient bytes (4 x trainable parameters).
        compute_s: one GPU's forward + backward + optimizer time per step (measured, or
            compute_from_flops).
        link_gbps: inter-node bandwidth of one node, all its NICs together, Gb/s.
        powersgd_bytes: payload under PowerSGD (gradient_payload(shapes, "powersgd")); needed
            for hook="powersgd".
        compressed_fraction: share of the gradient elements PowerSGD compresses (for its compute
            cost; 0.96 on AlexNet with the default size floor).
        hook_compute_s: a measured hook cost per step, replacing the memory-traffic estimate.
    """
    payload, collectives, traffic = hook_traffic(
        model_bytes, hook, powersgd_bytes, compressed_fraction, bucket_mb
    )
    if nodes * gpus_per_node == 1:  # nothing to all-reduce, no hook runs
        comm = hook_cost = 0.0
    else:
        comm = all_reduce_seconds(
            payload,
            nodes,
            gpus_per_node,
            link_gbps,
            collectives=collectives,
            nvlink_gbps=nvlink_gbps,
        )
        hook_cost = hook_compute_s if hook_compute_s is not None else traffic / hbm_bytes_per_s
    backward = 2 / 3 * compute_s
    exposed = max(0.0, comm - overlap * backward)
    step = compute_s + hook_cost + exposed
    return Prediction(
        hook=hook,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        link_gbps=link_gbps,
        payload_bytes=payload,
        compute_s=compute_s,
        hook_compute_s=hook_cost,
        comm_s=comm,
        exposed_comm_s=exposed,
        step_s=step,
        efficiency=compute_s / step,
    )


def hook_traffic(
    model_bytes: float,
    hook: str,
    powersgd_bytes: float | None,
    compressed_fraction: float,
    bucket_mb: float,
) -> tuple[float, int, float]:
    """What one step of `hook` sends and touches: (bytes on the wire, collectives per step,
    bytes of memory traffic the hook itself reads and writes); predict's arguments."""
    if hook not in HOOKS:
        raise ValueError(f"hook {hook!r} is not one of {', '.join(HOOKS)}")
    elements = model_bytes / 4
    buckets = max(1, math.ceil(model_bytes / (bucket_mb * 1e6)))
    if hook == "powersgd":
        if powersgd_bytes is None:
            raise ValueError("hook='powersgd' needs powersgd_bytes=gradient_payload(shapes, ...)")
        traffic = elements * (
            compressed_fraction * HOOK_BYTES_PER_ELEMENT["powersgd"]
            + (1 - compressed_fraction) * HOOK_BYTES_PER_ELEMENT["none"]
        )
        return powersgd_bytes, 3 * buckets, traffic
    payload = model_bytes / 2 if hook in ("fp16", "bf16") else model_bytes
    return payload, buckets, elements * HOOK_BYTES_PER_ELEMENT[hook]


def recommend_hook(
    model_bytes: float,
    compute_s: float,
    nodes: int,
    gpus_per_node: int,
    link_gbps: float,
    *,
    powersgd_bytes: float | None = None,
    bf16_supported: bool = True,
    tolerance: float = 0.05,
    bound_fraction: float = 0.1,
    **kwargs,
) -> Recommendation:
    """The hook to use: the least lossy one (none, bf16, fp16, powersgd, in that order) whose
    predicted step is within `tolerance` of the fastest. Compression costs accuracy (see
    docs/BENCHMARKS.md), so it has to buy speed. Without powersgd_bytes PowerSGD is left out;
    fp16 is considered only where bf16 is not supported. Extra keyword arguments go to predict.
    """
    candidates = ["none", "bf16" if bf16_supported else "fp16"]
    if powersgd_bytes is not None:
        candidates.append("powersgd")
    predictions = {
        hook: predict(
            model_bytes,
            compute_s,
            nodes,
            gpus_per_node,
            link_gbps,
            hook,
            powersgd_bytes=powersgd_bytes,
            **kwargs,
        )
        for hook in candidates
    }
    fastest = min(p.step_s for p in predictions.values())
    hook = next(
        h
        for h in RISK_ORDER
        if h in predictions and predictions[h].step_s <= fastest * (1 + tolerance)
    )
    none = predictions["none"]
    comm_bound = none.exposed_comm_s >= bound_fraction * none.step_s
    where = f"{nodes} x {gpus_per_node} GPUs, {link_gbps:g} Gb/s per node"
    verdict = explain_hook(hook, comm_bound, predictions, where, tolerance)
    return Recommendation(hook, comm_bound, predictions, verdict)


def explain_hook(
    hook: str,
    comm_bound: bool,
    predictions: dict[str, Prediction],
    where: str,
    tolerance: float,
) -> str:
    """recommend_hook's one-sentence verdict: why `hook`, in the numbers of train.comm_hook=none
    (and of the chosen hook); `where` names the nodes, GPUs and link."""
    none = predictions["none"]
    if not comm_bound:
        verdict = (
            f"compute-bound on {where}: the all-reduce is hidden behind backward "
            f"({1000 * none.exposed_comm_s:.1f} of {1000 * none.step_s:.1f} ms exposed, "
            f"{100 * none.efficiency:.0f}% scaling efficiency): keep train.comm_hook=none"
        )
    elif hook == "none":
        verdict = (
            f"all-reduce-bound on {where} ({100 * none.comm_fraction:.0f}% of each "
            f"{1000 * none.step_s:.1f} ms step waits on it), and no hook predicts more than "
            f"{100 * tolerance:.0f}% faster: keep train.comm_hook=none; larger per-GPU batches "
            "or faster links help"
        )
    else:
        chosen = predictions[hook]
        verdict = (
            f"all-reduce-bound on {where}: with train.comm_hook=none "
            f"{100 * none.comm_fraction:.0f}% of each {1000 * none.step_s:.1f} ms step waits on it "
            f"({100 * none.efficiency:.0f}% scaling efficiency); train.comm_hook={hook} predicts "
            f"{1000 * chosen.step_s:.1f} ms ({100 * chosen.efficiency:.0f}%)"
        )
    return verdict


# -- the tables of docs/comm.md --------------------------------------------------------------------
def model_shapes(name: str) -> list[tuple[int, ...]]:
    """Gradient shapes of the full-width AlexNet (torchvision layout) or ResNet-50, 1000 classes."""
    import torch

    with torch.device("meta"):  # shapes only: nothing is allocated
        if name == "alexnet":
            from pipeline.config import ModelConfig
            from pipeline.models import build_model

            model = build_model(ModelConfig(), 1000)
        else:
            import torchvision

            model = torchvision.models.resnet50()
    return [tuple(p.shape) for p in model.parameters()]


def tables(
    name: str,
    compute_s: float,
    nodes: Sequence[int],
    links: Sequence[float],
    gpus_per_node: int = 8,
    **kwargs,
) -> str:
    """Markdown: for each link speed, step ms and scaling efficiency per hook and node count, and
    the recommended hook."""
    shapes = model_shapes(name)
    model_bytes = gradient_payload(shapes, "none")
    powersgd_bytes = gradient_payload(shapes, "powersgd")
    from pipeline.powersgd import compressed_shape

    compressed = sum(math.prod(s) for s in shapes if compressed_shape(tuple(s), 4, 1_000_000))
    fraction = compressed / (model_bytes / 4)
    title = (
        f"{name}: {model_bytes / 1e6:.1f} MB of fp32 gradients, {powersgd_bytes / 1e6:.1f} MB "
        f"under powersgd rank 4 ({model_bytes / powersgd_bytes:.1f}x less); "
        f"{1000 * compute_s:.2f} ms of compute per GPU step"
    )
    lines = [title, ""]
    for link in links:
        lines += [
            f"**{link:g} Gb/s per node** (step ms, scaling efficiency)",
            "",
            "| nodes x GPUs | none | bf16 | powersgd | pick |",
            "| --- | --- | --- | --- | --- |",
        ]
        for count in nodes:
            pick = recommend_hook(
                model_bytes,
                compute_s,
                count,
                gpus_per_node,
                link,
                powersgd_bytes=powersgd_bytes,
                compressed_fraction=fraction,
                **kwargs,
            )
            cells = [
                f"{1000 * p.step_s:.1f} ({100 * p.efficiency:.0f}%)"
                for p in (pick.predictions[h] for h in ("none", "bf16", "powersgd"))
            ]
            lines.append(f"| {count} x {gpus_per_node} | {' | '.join(cells)} | {pick.hook} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.scaling", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", default="alexnet", choices=["alexnet", "resnet50"])
    parser.add_argument("--batch", type=int, default=256, help="images per GPU per step")
    parser.add_argument(
        "--compute-ms",
        type=float,
        default=0.0,
        help="measured GPU compute per step; 0 derives it from FLOPs at --mfu of an H100",
    )
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU)
    parser.add_argument("--overlap", type=float, default=DEFAULT_OVERLAP)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--links", type=float, nargs="+", default=[25, 100, 200, 400])
    args = parser.parse_args(argv)
    compute_s = args.compute_ms / 1000 or compute_from_flops(
        TRAIN_FLOPS_PER_IMAGE[args.model], args.batch, mfu=args.mfu
    )
    print(
        tables(
            args.model,
            compute_s,
            args.nodes,
            args.links,
            gpus_per_node=args.gpus_per_node,
            overlap=args.overlap,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
