"""Gradient communication hooks (pipeline/comm.py, pipeline/powersgd.py): what PowerSGD
compresses, that its state is independent of DDP's bucket plan and survives a checkpoint bit for
bit, the one-line resume messages, and the gloo dtype probe. The hooks run on real 2-rank gloo
groups, outside DDP, on tools/bench_comm.py's FlatBuckets; tests/train/test_comm_training.py
runs them inside the trainer."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from train_helpers import run_gloo_ranks

from pipeline.comm import GradientComm, build_hook, check_dtype_all_reduces, describe_resume
from pipeline.config import ModelConfig, TrainConfig, load_config
from pipeline.distributed import DistInfo
from pipeline.errors import ConfigError
from pipeline.models import build_model
from pipeline.powersgd import compressed_shape, powersgd_payload_elements
from tools.bench_comm import FlatBucket

# --- what is compressed -----------------------------------------------------------------------


def full_alexnet_shapes() -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = build_model(ModelConfig(), 1000)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def test_the_default_min_size_compresses_only_alexnets_three_fc_weights_and_sends_20x_less():
    shapes = full_alexnet_shapes()
    compressed = [n for n, s in shapes.items() if compressed_shape(s, 4, 1_000_000) is not None]
    assert compressed == ["classifier.1.weight", "classifier.4.weight", "classifier.6.weight"]
    plain = sum(torch.Size(s).numel() for s in shapes.values())
    sent = powersgd_payload_elements(list(shapes.values()), 4, 1_000_000)
    assert plain == 61_100_840
    # P + Q of the FC weights ((rows + cols) * 4 each) plus every conv and bias element
    fc = [(4096, 9216), (4096, 4096), (1000, 4096)]
    assert sent == plain - sum(r * c for r, c in fc) + sum((r + c) * 4 for r, c in fc)
    assert plain / sent > 20
    # with no size floor torch's own rule would also compress the convs
    assert compressed_shape(shapes["features.3.weight"], 4, 0) == (192, 1600)


def test_vectors_small_matrices_and_matrices_that_gain_little_stay_uncompressed():
    assert compressed_shape((4096,), 4, 0) is None  # a bias
    assert compressed_shape((64, 3, 11, 11), 4, 30_000) is None  # 23,232: below the floor
    assert compressed_shape((10, 12), 4, 0) is None  # (10 + 12) * 4 * 2 >= 120: not worth it
    assert compressed_shape((64, 3, 11, 11), 4, 0) == (64, 363)


# --- the hook on real gloo ranks, outside DDP ---------------------------------------------------


class SmallNet(nn.Module):
    """Shapes that exercise every path: a conv below the size floor, two FC weights above it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3)  # 288 elements: all-reduced uncompressed
        self.fc1 = nn.Linear(72, 32)  # 2304: compressed at rank 4
        self.fc2 = nn.Linear(32, 16)  # 512: compressed ((16 + 32) * 4 * 2 < 512)


HOOK = {"powersgd_rank": 4, "powersgd_warmup_steps": 2, "powersgd_min_elements": 300}
ONE_BUCKET = 1 << 30  # DDP's plan for a process's first step: one bucket
SMALL_BUCKETS = 2000  # bytes: [fc2.*], [fc1.*], [conv.*] (the last one holds no large gradient)


def gradients(rank: int, step: int, model: nn.Module) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 * rank + step)
    return [torch.randn(p.shape, generator=generator) for p in model.parameters()]


def run_step(model, state, hook, cap_bytes: int, rank: int, step: int) -> dict[str, torch.Tensor]:
    """One step's gradients through the hook on buckets of `cap_bytes`; the averaged gradients."""
    for p, g in zip(model.parameters(), gradients(rank, step, model)):
        p.grad = g
    buckets = FlatBucket.plan(list(model.parameters()), cap_bytes)
    for bucket in buckets:
        bucket.load_gradients()
    futures = [hook(state, bucket) for bucket in buckets]
    for bucket, future in zip(buckets, futures):
        future.wait()
        bucket.store_gradients()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _bucket_plans_do_not_change_the_result(dist: DistInfo) -> dict:
    torch.manual_seed(0)
    changing, steady = SmallNet(), SmallNet()
    state_a, hook_a = build_hook("powersgd", changing, **HOOK)
    state_b, hook_b = build_hook("powersgd", steady, **HOOK)
    outputs = []
    for step in range(8):  # warm-up 0-1; one bucket for steps 2-4, then small buckets
        cap = ONE_BUCKET if step < 5 else SMALL_BUCKETS
        a = run_step(changing, state_a, hook_a, cap, dist.rank, step)
        b = run_step(steady, state_b, hook_b, SMALL_BUCKETS, dist.rank, step)
        outputs.append((a, b))
    return {
        "same": all(torch.equal(a[n], b[n]) for a, b in outputs for n in a),
        "layouts": len(state_a.layouts),
        "iteration": state_a.state.iter,
        "compressed_rank": int(torch.linalg.matrix_rank(outputs[-1][0]["fc1.weight"])),
        "fc1": outputs[-1][0]["fc1.weight"],
        "conv": outputs[-1][0]["conv.weight"],
        "local_conv": gradients(dist.rank, 7, steady)[0],
        "payload": state_b.payload_bytes,
    }


@pytest.mark.slow
def test_powersgd_gives_the_same_gradients_whatever_ddps_bucket_plan():
    ranks = run_gloo_ranks(2, _bucket_plans_do_not_change_the_result)
    for result in ranks:
        assert not isinstance(result, Exception), result
        assert result["same"]  # bit for bit, across a re-plan after PowerSGD started
        assert result["layouts"] == 4 and result["iteration"] == 8
        assert result["compressed_rank"] <= 4  # fc1's averaged gradient is a rank-4 P Q^T
    # both ranks end with the same gradients; the uncompressed conv is the exact mean
    assert torch.equal(ranks[0]["fc1"], ranks[1]["fc1"])
    assert torch.equal(ranks[0]["conv"], (ranks[0]["local_conv"] + ranks[1]["local_conv"]) / 2)
    # 2 warm-up steps of every element, then 6 of conv + biases + P and Q of fc1 and fc2
    plain = sum(p.numel() for p in SmallNet().parameters())
    compressed = (288 + 8 + 32 + 16) + (32 + 72) * 4 + (16 + 32) * 4
    assert ranks[0]["payload"] == 4 * (2 * plain + 6 * compressed)


def _save_then_resume_in_a_fresh_hook(dist: DistInfo, path) -> dict:
    torch.manual_seed(0)
    model = SmallNet()
    state, hook = build_hook("powersgd", model, **HOOK)
    reference = [run_step(model, state, hook, SMALL_BUCKETS, dist.rank, s) for s in range(5)]
    saved = {"hook": "powersgd", "world_size": 2, **state.state_dict(dist)}  # as GradientComm
    if dist.is_main:
        torch.save(saved, path)  # rank 0 writes the checkpoint, as the trainer does
    reference += [run_step(model, state, hook, SMALL_BUCKETS, dist.rank, s) for s in range(5, 8)]
    torch.distributed.barrier()

    # a new process's view: a fresh model and hook, the state read back with weights_only
    loaded = torch.load(path, weights_only=True)
    torch.manual_seed(0)
    fresh = SmallNet()
    resumed_state, resumed_hook = build_hook("powersgd", fresh, **HOOK)
    _, carried = describe_resume(loaded, {"hook": "powersgd", "world_size": 2, "powersgd_rank": 4})
    resumed_state.load_state_dict(loaded, dist, carried)
    # a resumed process's DDP runs its first step in one bucket, then re-plans
    caps = [ONE_BUCKET, SMALL_BUCKETS, SMALL_BUCKETS]
    resumed = [
        run_step(fresh, resumed_state, resumed_hook, cap, dist.rank, s)
        for cap, s in zip(caps, range(5, 8))
    ]
    return {"reference": reference[5:], "resumed": resumed, "state": saved, "carried": carried}


@pytest.mark.slow
def test_powersgd_state_resumes_from_a_weights_only_checkpoint_bit_for_bit(tmp_path):
    ranks = run_gloo_ranks(2, _save_then_resume_in_a_fresh_hook, tmp_path / "comm.pt")
    for result in ranks:
        assert not isinstance(result, Exception), result
    state = ranks[0]["state"]
    assert state["hook"] == "powersgd" and state["iteration"] == 5 and state["world_size"] == 2
    assert sorted(state["q"]) == ["fc1.weight", "fc2.weight"]
    assert len(state["errors"]) == 2 and ranks[1]["state"]["errors"] == []  # on rank 0 only
    # error memories: each rank's own, for the compressed gradients only
    assert sorted(state["errors"][0]) == sorted(state["errors"][1]) == ["fc1.weight", "fc2.weight"]
    assert not torch.equal(state["errors"][0]["fc1.weight"], state["errors"][1]["fc1.weight"])
    for rank, result in enumerate(ranks):
        assert result["carried"] == {"iteration", "q", "errors"}
        for step, (got, want) in enumerate(zip(result["resumed"], result["reference"])):
            for name in want:
                assert torch.equal(got[name], want[name]), (rank, step + 5, name)


def _half_hooks_and_a_dtype_gloo_lacks(dist: DistInfo) -> dict:
    results = {}
    for dtype in (torch.float16, torch.bfloat16, torch.float8_e4m3fn):
        try:
            check_dtype_all_reduces(dtype, dist, "train.comm_hook=test")
            results[str(dtype)] = "ok"
        except ConfigError as err:
            results[str(dtype)] = str(err)
    torch.manual_seed(0)
    model = SmallNet()
    for name in ("fp16", "bf16"):
        state, hook = build_hook(name, model)
        results[name] = run_step(model, state, hook, SMALL_BUCKETS, dist.rank, 0)
    results["local"] = gradients(dist.rank, 0, model)
    return results


@pytest.mark.slow
def test_fp16_and_bf16_all_reduce_on_gloo_and_a_dtype_it_lacks_fails_in_one_line():
    ranks = run_gloo_ranks(2, _half_hooks_and_a_dtype_gloo_lacks)  # returns: nobody hangs
    for result in ranks:
        assert not isinstance(result, Exception), result
        assert result["torch.float16"] == result["torch.bfloat16"] == "ok"
        message = result["torch.float8_e4m3fn"]
        assert message.startswith("train.comm_hook=test: the gloo process group cannot all-reduce")
        assert "use train.comm_hook=fp16 or none" in message and "\n" not in message
    mean = [(a + b) / 2 for a, b in zip(ranks[0]["local"], ranks[1]["local"])]
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        for got, want in zip(ranks[0][name].values(), mean):
            # each rank's half-precision share, summed in half precision
            tolerance = 4 * torch.finfo(dtype).eps * want.abs().max().item()
            assert (got - want).abs().max().item() <= tolerance, name
            assert not torch.equal(got, want)  # it really went through 16 bits
        assert all(
            torch.equal(a, b) for a, b in zip(ranks[0][name].values(), ranks[1][name].values())
        )


# --- configuration and resume messages --------------------------------------------------------


def test_hook_settings_are_checked_in_one_line():
    with pytest.raises(ConfigError, match="powersgd_warmup_steps must be >= 2"):
        load_config(None, ["train.powersgd_warmup_steps=1"])
    with pytest.raises(ConfigError, match="is not one of none, fp16, bf16, powersgd"):
        load_config(None, ["train.comm_hook=int8"])
    with pytest.raises(ConfigError, match="bucket_cap_mb must be positive"):
        load_config(None, ["train.bucket_cap_mb=0"])
    with pytest.raises(ConfigError, match="static graph breaks under gradient accumulation"):
        load_config(None, ["train.static_graph=true", "optim.grad_accum_steps=2"])
    cfg = load_config(None, ["train.comm_hook=powersgd"])
    train = TrainConfig(comm_hook="powersgd")
    world = DistInfo(rank=0, world_size=2, backend="gloo")
    with pytest.raises(ConfigError, match="use train.precision=bf16"):
        GradientComm(train, world, nn.Module(), SmallNet(), "fp16")  # refused before registering
    assert cfg.train.powersgd_warmup_steps == 1000 and cfg.train.powersgd_min_elements == 1_000_000


SAVED = {"hook": "powersgd", "world_size": 2, "powersgd_rank": 4, "iteration": 1234}


@pytest.mark.parametrize(
    ("saved", "current", "line", "carried"),
    [
        (
            SAVED,
            {"hook": "powersgd", "world_size": 2, "powersgd_rank": 4},
            "",
            {"iteration", "q", "errors"},
        ),
        (
            SAVED,
            {"hook": "powersgd", "world_size": 2, "powersgd_rank": 8},
            (
                "train.powersgd_rank 4 → 8: PowerSGD's iteration (1234) and error memories carry "
                "over; its Q matrices start afresh"
            ),
            {"iteration", "errors"},
        ),
        (
            SAVED,
            {"hook": "powersgd", "world_size": 4, "powersgd_rank": 4},
            (
                "world size 2 → 4: PowerSGD's iteration (1234) and Q matrices carry over; the "
                "per-rank error memories start at zero"
            ),
            {"iteration", "q"},
        ),
        (
            SAVED,
            {"hook": "bf16", "world_size": 2, "powersgd_rank": 4},
            (
                "train.comm_hook changed powersgd → bf16: PowerSGD's state (iteration 1234, Q "
                "matrices, error memories) is dropped, bf16 keeps none"
            ),
            set(),
        ),
        (
            {"hook": "none", "world_size": 2},
            {"hook": "powersgd", "world_size": 2, "powersgd_rank": 4},
            (
                "train.comm_hook changed none → powersgd: PowerSGD starts afresh with its plain "
                "all-reduce warm-up"
            ),
            set(),
        ),
        (
            None,  # a checkpoint from before comm hooks
            {"hook": "fp16", "world_size": 2, "powersgd_rank": 4},
            "train.comm_hook changed none → fp16: neither keeps state",
            set(),
        ),
        (None, {"hook": "none", "world_size": 2, "powersgd_rank": 4}, "", set()),
    ],
)
def test_a_resume_under_another_hook_rank_or_world_says_in_one_line_what_carries_over(
    saved, current, line, carried
):
    assert describe_resume(saved, current) == (line, carried)


def test_powersgds_first_q_of_each_parameter_follows_the_one_seed_rule():
    from core.seeds import Purpose, stream_seed
    from pipeline.powersgd import PowerSGDHook, Slot

    hook = PowerSGDHook(SmallNet(), rank=4, warmup_steps=2, min_elements=300, seed=3)
    index = [name for name, _ in SmallNet().named_parameters()].index("fc1.weight")
    slot = Slot(
        "fc1.weight", offset=0, numel=2304, rows=32, cols=72, rank=4, p_offset=0, q_offset=0
    )
    generator = torch.Generator().manual_seed(stream_seed(3, Purpose.COMM_INIT, index=index))
    assert torch.equal(hook.initial_q(slot), torch.randn(72 * 4, generator=generator))
    other = torch.Generator().manual_seed(stream_seed(4, Purpose.COMM_INIT, index=index))
    assert not torch.equal(hook.initial_q(slot), torch.randn(72 * 4, generator=other))
