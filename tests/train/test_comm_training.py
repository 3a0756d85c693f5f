"""Comm hooks inside real 2-rank gloo training: the replica check at every save passes under each
hook (and catches a hook that leaves the ranks apart), a resume under another PowerSGD rank says
what carries over, and a PowerSGD run stopped by SIGTERM mid-epoch, resumed, SIGKILLed and
resumed again ends bit-identical to an uninterrupted one (mirroring test_ddp_training.py)."""

from __future__ import annotations

import logging

import pytest
import torch
from test_ddp_training import _kill, wait_for
from train_helpers import (
    child_pids,
    latest_step,
    launch_ranks,
    run_gloo_ranks,
    sigterm_ranks_when,
    start_torchrun,
    tiny_args,
    torchrun,
)

from pipeline.checkpoint import load_checkpoint
from pipeline.comm import HOOKS

pytestmark = pytest.mark.slow

# 160 train images, global batch 8 over 2 ranks: 20 steps per epoch. Buckets of 0.1 MB split the
# tiny AlexNet into several, one of them without a large gradient; PowerSGD starts at step 3 and
# compresses the four convs above 10k elements and the first FC weight.
RECIPE = (
    "data.global_batch_size=8",
    "optim.lr=0.064",
    "train.log_every=1",
    "train.bucket_cap_mb=0.1",
    "train.powersgd_warmup_steps=3",
    "train.powersgd_min_elements=10000",
)


def _train_under_each_hook(dist, data, root) -> dict:
    from pipeline.config import load_config
    from pipeline.train.cli import parse_args
    from pipeline.train.trainer import Trainer

    def trainer(run_dir, *extra) -> Trainer:
        args = parse_args(tiny_args(data, run_dir, *RECIPE, *extra))
        return Trainer(load_config(args.config, args.overrides), dist, [], resume=None)

    # accumulation 2 (20 steps of 2 micro-batches): the hook runs once per optimizer step, on
    # the last micro-batch, and PowerSGD counts optimizer steps
    each = ("train.epochs=1", "optim.grad_accum_steps=2")
    results = {}
    for hook in HOOKS:
        results[hook] = trainer(root / hook, *each, f"train.comm_hook={hook}").train()
    static = ("train.max_steps=5", "train.static_graph=true", "train.comm_hook=powersgd")
    results["static"] = trainer(root / "static", *static).train()
    # a resume under another PowerSGD rank: one line on rank 0
    lines: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("pipeline.comm").addHandler(handler)
    trainer(root / "powersgd", *each, "train.comm_hook=powersgd", "train.powersgd_rank=2")
    logging.getLogger("pipeline.comm").removeHandler(handler)
    results["resume lines"] = lines

    # a hook that hands back each rank's own gradients: the replicas drift apart
    import pipeline.comm

    def local_only(state, bucket):
        future = torch.futures.Future()
        future.set_result(bucket.buffer())
        return future

    pipeline.comm.build_hook = lambda *args, **kwargs: (None, local_only)
    try:
        trainer(root / "broken", "train.max_steps=2", "train.comm_hook=fp16").train()
        results["broken"] = "no error"
    except RuntimeError as err:
        results["broken"] = str(err)
    return results


def test_replicas_stay_identical_under_every_hook_and_the_save_check_catches_one_that_drifts(
    tiny_data, tmp_path
):
    ranks = run_gloo_ranks(2, _train_under_each_hook, tiny_data, tmp_path, timeout=600)
    for result in ranks:
        assert not isinstance(result, Exception), result
        assert all(result[hook] == 0 for hook in (*HOOKS, "static")), result
    final = {hook: load_checkpoint(tmp_path / hook / "checkpoints/last.pt") for hook in HOOKS}
    for hook, state in final.items():
        # save() compared every rank's weight fingerprints after the epoch (it raises otherwise)
        assert state["step"] == 20 and len(state["replica_fingerprints"]) == 2, hook
        assert torch.equal(*state["replica_fingerprints"]), hook
        assert state["comm"]["hook"] == hook
        if hook != "none":  # the hook was active: its gradients, so its weights, differ
            model, reference = state["model"], final["none"]["model"]
            assert any(not torch.equal(model[k], reference[k]) for k in model), hook
    static = load_checkpoint(tmp_path / "static/checkpoints/last.pt")
    assert static["comm"]["iteration"] == 5 and torch.equal(*static["replica_fingerprints"])
    powersgd = final["powersgd"]["comm"]
    assert powersgd["iteration"] == 20  # optimizer steps, not micro-batches
    assert sorted(powersgd["q"]) == [
        "classifier.1.weight",
        "features.10.weight",
        "features.3.weight",
        "features.6.weight",
        "features.8.weight",
    ]
    assert ranks[0]["resume lines"] == [
        (
            "train.powersgd_rank 4 → 2: PowerSGD's iteration (20) and error memories carry "
            "over; its Q matrices start afresh"
        )
    ]
    assert ranks[1]["resume lines"] == []  # rank 0 says it once
    assert ranks[0]["broken"] == ranks[1]["broken"]
    assert ranks[0]["broken"].startswith("DDP replicas diverged at step 2")


@pytest.fixture(scope="module")
def powersgd_reference(tiny_data, tmp_path_factory):
    """An uninterrupted 2-rank torchrun run of RECIPE under PowerSGD, 2 epochs."""
    run_dir = tmp_path_factory.mktemp("powersgd-reference") / "run"
    argv = tiny_args(tiny_data, run_dir, *RECIPE, "train.epochs=2", "train.comm_hook=powersgd")
    result = torchrun(2, argv)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir


def test_a_powersgd_run_killed_mid_epoch_and_resumed_ends_bit_identical(
    powersgd_reference, tiny_data, tmp_path
):
    run_dir = tmp_path / "run"
    argv = tiny_args(tiny_data, run_dir, *RECIPE, "train.epochs=2", "train.comm_hook=powersgd")

    # 1. srun-style ranks, SIGTERM mid-epoch once PowerSGD compresses (from step 3)
    ranks = launch_ranks(2, argv, tmp_path)
    codes = sigterm_ranks_when(
        ranks, lambda: wait_for(lambda: latest_step(run_dir) >= 5, 180, "step 5", ranks)
    )
    assert codes == [75, 75], (tmp_path / "rank0.log").read_text()[-3000:]
    stopped = load_checkpoint(run_dir / "checkpoints/last.pt")
    assert stopped["epoch"] == 0 and 5 <= stopped["step"] < 20
    assert stopped["comm"]["iteration"] == stopped["step"] and len(stopped["comm"]["errors"]) == 2

    # 2. torchrun resumes mid-epoch (its first step in one DDP bucket); SIGKILL it in epoch 2
    launcher = start_torchrun(2, argv, tmp_path / "resume.log")
    try:
        wait_for(lambda: latest_step(run_dir) >= 23, 180, "step 23", [launcher])
        for pid in child_pids(launcher.pid):
            _kill(pid)
        launcher.kill()
        launcher.wait(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert load_checkpoint(run_dir / "checkpoints/last.pt")["step"] == 20

    # 3. a rerun finishes from the epoch-1 checkpoint
    result = torchrun(2, argv)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    resumed = load_checkpoint(run_dir / "checkpoints/last.pt")
    reference = load_checkpoint(powersgd_reference / "checkpoints/last.pt")
    assert resumed["step"] == reference["step"] == 40
    for key, value in reference["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    for index, buffers in reference["optimizer"]["state"].items():
        for name, value in buffers.items():
            assert torch.equal(resumed["optimizer"]["state"][index][name], value), (index, name)
    got, want = resumed["comm"], reference["comm"]
    assert got["iteration"] == want["iteration"] == 40
    assert sorted(got["q"]) == sorted(want["q"]) and len(want["q"]) == 5
    for name, q in want["q"].items():
        assert torch.equal(got["q"][name], q), name
    for rank in range(2):
        assert sorted(got["errors"][rank]) == sorted(want["errors"][rank])
        for name, error in want["errors"][rank].items():
            assert torch.equal(got["errors"][rank][name], error), (rank, name)
