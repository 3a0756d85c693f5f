"""Verdict: which of disk, decode, all-reduce and compute bounds this config, and what moves it.

    verdict, checks = decide(cfg, inputs)   # Inputs: the sections' numbers (examine.verdict_inputs)

Each candidate bound is expressed in the same unit, images/s per rank:
  * disk: the slowest node's cold read rate / bytes per image / ranks on the node;
  * decode: the configured loader's images/s on the slowest rank;
  * all-reduce: images one all-reduce serves (global batch / world) / the world all-reduce time,
    the rate if the step did nothing but synchronize gradients; or, when the step measured
    inside DDP runs below DDP_HIDDEN of the step alone (the all-reduce did not hide behind the
    backward pass), that measured rate;
  * compute: the step alone on synthetic data on the slowest rank.
The lowest is the bound, and world size x that rate is the most the run can do. Each bound has
a change that moves it, as `section.key=value` overrides where one exists.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from pipeline import scaling
from pipeline.config import Config
from pipeline.doctor.report import Check

BOUNDS = ("disk", "decode", "all-reduce", "compute")
DDP_HIDDEN = 0.9  # a DDP step at >= 90% of the step alone: the all-reduce hides behind backward


@dataclasses.dataclass(frozen=True)
class Recommendation:
    """What to change: one sentence, and the overrides that make it (empty when none do)."""

    text: str
    overrides: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "overrides": list(self.overrides)}


@dataclasses.dataclass(frozen=True)
class Inputs:
    """The numbers the verdict weighs (None where a section could not measure them)."""

    world_size: int
    ranks_per_node: int
    images_per_step: int  # per rank: global batch / world (every micro-batch of a step)
    on_gpu: bool
    dali_importable: bool
    cores_per_rank: float
    compute: float | None  # images/s per rank, the step alone
    ddp: float | None  # images/s per rank, the step inside DDP
    decode: float | None  # images/s per rank, the configured loader
    decode_alternatives: dict[str, dict[str, Any]]  # label -> {images_per_s, overrides}
    configured_decode_label: str | None
    node_read_bytes_per_s: float | None
    bytes_per_image: float | None
    layouts: dict[str, str]  # "shards"/"folders" -> directory
    all_reduce_s: float | None  # world all-reduce of the whole gradient, seconds
    inter_node: bool
    precision: str | None
    peak_memory_gb: float | None
    device_memory_gb: float | None
    gradient_shapes: tuple[tuple[int, ...], ...] = ()  # the trainable parameters', for the hooks


def rates_per_rank(inputs: Inputs) -> dict[str, float | None]:
    """Each candidate bound in images/s per rank."""
    disk = None
    if inputs.node_read_bytes_per_s and inputs.bytes_per_image:
        disk = inputs.node_read_bytes_per_s / inputs.bytes_per_image / inputs.ranks_per_node
    all_reduce = None
    if inputs.all_reduce_s:
        all_reduce = inputs.images_per_step / inputs.all_reduce_s
        if inputs.ddp and inputs.compute and inputs.ddp < DDP_HIDDEN * inputs.compute:
            all_reduce = min(all_reduce, inputs.ddp)  # what the exposed all-reduce leaves
    return {
        "disk": disk,
        "decode": inputs.decode,
        "all-reduce": all_reduce,
        "compute": inputs.compute,
    }


def recommend_comm_hook(cfg: Config, inputs: Inputs) -> Recommendation | None:
    """The gradient hook pipeline/scaling.py's model picks for the measured step and all-reduce
    (train.comm_hook), or None when nothing was measured or the configured hook already is it.

    The link is what this run's world all-reduce achieved: its bus bandwidth, 2(W-1)/W * S / t,
    stands for the slowest link (the inter-node one when there are several nodes)."""
    measured = inputs.all_reduce_s and inputs.compute and inputs.gradient_shapes
    if not (measured and inputs.on_gpu and inputs.world_size > 1):
        return None  # the model's GPU constants (HBM, NVLink) say nothing about a CPU run
    world = inputs.world_size
    nodes = max(1, world // max(1, inputs.ranks_per_node))
    model_bytes = scaling.gradient_payload(inputs.gradient_shapes, "none")
    measured_gbps = 2 * (world - 1) / world * model_bytes / inputs.all_reduce_s * 8 / 1e9
    link = {"link_gbps": measured_gbps} if nodes > 1 else {"nvlink_gbps": measured_gbps}
    powersgd_bytes = scaling.gradient_payload(
        inputs.gradient_shapes,
        "powersgd",
        powersgd_rank=cfg.train.powersgd_rank,
        powersgd_min_elements=cfg.train.powersgd_min_elements,
    )
    choice = scaling.recommend_hook(
        model_bytes,
        inputs.images_per_step / inputs.compute,
        nodes,
        world // nodes,
        link.pop("link_gbps", measured_gbps),
        powersgd_bytes=powersgd_bytes,
        bf16_supported=inputs.precision == "bf16",
        **link,
    )
    if choice.hook == cfg.train.comm_hook:
        return None
    return Recommendation(choice.verdict, (f"train.comm_hook={choice.hook}",))


def recommend_for_compute(cfg: Config, inputs: Inputs) -> Recommendation:
    if not inputs.on_gpu:
        return Recommendation(
            "the model step on CPU bounds the run, as expected without a GPU: train on GPUs "
            "(train.device=cuda) for real runs"
        )
    if inputs.precision == "fp32":
        return Recommendation(
            "fp32 leaves the tensor cores idle: autocast to bf16 (fp16 on pre-Ampere GPUs)",
            ("train.precision=auto",),
        )
    if not cfg.train.channels_last:
        return Recommendation(
            "NHWC convolutions are faster on tensor cores", ("train.channels_last=true",)
        )
    if not cfg.train.compile:
        return Recommendation(
            "torch.compile fuses the elementwise ops (a minute of compiling at start; rerun the "
            "doctor with it to see the gain)",
            ("train.compile=true",),
        )
    memory, total = inputs.peak_memory_gb, inputs.device_memory_gb
    if memory and total and memory < 0.4 * total:
        return Recommendation(
            f"the step uses {memory:.1f} of {total:.0f} GB: a larger batch keeps the GPU busier "
            "(optim.lr is per 256 images and scales with it)",
            (f"data.global_batch_size={cfg.data.global_batch_size * 2}",),
        )
    return Recommendation("compute-bound, as a run should be: more GPUs are the next step up")


def recommend_for_decode(cfg: Config, inputs: Inputs) -> Recommendation:
    alternatives = {
        label: entry
        for label, entry in inputs.decode_alternatives.items()
        if label != inputs.configured_decode_label
    }
    if inputs.on_gpu and inputs.configured_decode_label != "dali mixed":
        mixed = alternatives.get("dali mixed")
        if mixed:
            return Recommendation(
                f"decode the JPEGs on the GPU with DALI's nvJPEG ({mixed['images_per_s']:.0f} "
                "images/s per rank measured)",
                tuple(mixed["overrides"]),
            )
        if not inputs.dali_importable:
            return Recommendation(
                "decode the JPEGs on the GPU with DALI's nvJPEG (install nvidia-dali-cuda130 "
                "first: DALI is not importable here)",
                ("data.backend=dali", "data.dali_decode=mixed"),
            )
    best = max(alternatives.items(), key=lambda item: item[1]["images_per_s"], default=None)
    if best and inputs.decode and best[1]["images_per_s"] > 1.2 * inputs.decode:
        label, entry = best
        return Recommendation(
            f"the {label} loader decodes {entry['images_per_s']:.0f} images/s per rank on the same "
            "data",
            tuple(entry["overrides"]),
        )
    workers = cfg.data.num_workers
    spare = int(inputs.cores_per_rank) - 1
    if spare > workers:
        return Recommendation(
            f"{workers} workers on {inputs.cores_per_rank:g} cores per rank: use the idle cores",
            (f"data.num_workers={spare}",),
        )
    return Recommendation(
        f"decoding uses every core ({inputs.cores_per_rank:g} per rank): more CPU cores per rank "
        "(fewer ranks per node), or a GPU with data.backend=dali data.dali_decode=mixed"
    )


def recommend_for_disk(cfg: Config, inputs: Inputs) -> Recommendation:
    if cfg.data.backend == "folder" and "shards" in inputs.layouts:
        return Recommendation(
            "read the same images as shards: large sequential reads instead of one small file per "
            "image",
            ("data.backend=wds", f"data.train_dir={inputs.layouts['shards']}"),
        )
    if "shards" not in inputs.layouts:
        return Recommendation(
            "one small file per image: write shards (`python -m preprocess shard "
            f"{cfg.data.train_dir} DST/train --split train`) and read them with data.backend=wds"
        )
    return Recommendation(
        "the shards read slower than the step consumes them: copy them to node-local NVMe (or "
        "a faster file system) and point data.train_dir there"
    )


def recommend_for_all_reduce(
    cfg: Config, inputs: Inputs, rates: dict[str, float]
) -> Recommendation:
    hook = recommend_comm_hook(cfg, inputs)
    if hook is not None:
        return hook
    target = min(rate for name, rate in rates.items() if name != "all-reduce" and rate)
    factor = max(2, math.ceil(target / rates["all-reduce"]))
    world = inputs.world_size
    larger = cfg.data.global_batch_size * factor
    larger += (-larger) % world
    network = (
        "; check the inter-node fabric too (NCCL_SOCKET_IFNAME, NCCL_IB_HCA)"
        if inputs.inter_node
        else ""
    )
    return Recommendation(
        f"each all-reduce serves only {inputs.images_per_step} images per rank: a {factor}x larger "
        "global batch amortizes it (optim.lr scales with it; raise optim.grad_accum_steps if it "
        f"does not fit){network}",
        (f"data.global_batch_size={larger}",),
    )


def decide(cfg: Config, inputs: Inputs) -> tuple[dict[str, Any], list[Check]]:
    """The verdict for doctor.json and its lines in the table."""
    rates = rates_per_rank(inputs)
    known = {name: rate for name, rate in rates.items() if rate}
    verdict: dict[str, Any] = {
        "rates_images_per_s_per_rank": {k: (round(v, 1) if v else None) for k, v in rates.items()},
        "bound": None,
        "expected_images_per_s": None,
        "change": None,
        "comm_hook": None,
    }
    if not known:
        return verdict, [
            Check("verdict", "bound", "skip", "nothing was measured: fix the failing checks first")
        ]
    bound = min(known, key=known.get)
    rate = known[bound]
    recommendation = {
        "compute": lambda: recommend_for_compute(cfg, inputs),
        "decode": lambda: recommend_for_decode(cfg, inputs),
        "disk": lambda: recommend_for_disk(cfg, inputs),
        "all-reduce": lambda: recommend_for_all_reduce(cfg, inputs, known),
    }[bound]()
    hook = recommend_comm_hook(cfg, inputs)
    verdict |= {
        "bound": bound,
        "expected_images_per_s": round(rate * inputs.world_size, 1),
        "change": recommendation.as_dict(),
        "comm_hook": hook.as_dict() if hook else None,
    }
    return verdict, verdict_checks(verdict, rates, inputs, recommendation)


def verdict_checks(
    verdict: dict[str, Any],
    rates: dict[str, float | None],
    inputs: Inputs,
    recommendation: Recommendation,
) -> list[Check]:
    """The verdict's three lines in the table: the bound, the expected rate, the change."""
    bound = verdict["bound"]
    rate = rates[bound]
    others = ", ".join(
        f"{name} {value:.0f}" if value else f"{name} not measured"
        for name, value in rates.items()
        if name != bound
    )
    return [
        Check(
            "verdict",
            "bound",
            "ok" if bound == "compute" else "warn",
            f"{bound}: {rate:.0f} images/s per rank ({others})",
            verdict["rates_images_per_s_per_rank"],
        ),
        Check(
            "verdict",
            "expected",
            "info",
            f"at most {rate * inputs.world_size:.0f} images/s on {inputs.world_size} rank(s)"
            + (
                f"; measured inside DDP: {inputs.ddp * inputs.world_size:.0f}" if inputs.ddp else ""
            ),
            {"expected_images_per_s": verdict["expected_images_per_s"]},
        ),
        Check(
            "verdict",
            "change",
            "info",
            recommendation.text
            + (f": {' '.join(recommendation.overrides)}" if recommendation.overrides else ""),
            recommendation.as_dict(),
        ),
    ]
