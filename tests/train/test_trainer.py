"""The Trainer object itself: whole after __init__, and its loop pieces."""

from __future__ import annotations

import gc

import torch
from train_helpers import tiny_args

from pipeline.config import load_config
from pipeline.distributed import DistInfo
from pipeline.train.cli import parse_args
from pipeline.train.trainer import Trainer


def build_trainer(tiny_data, run_dir, *extra) -> Trainer:
    args = parse_args(tiny_args(tiny_data, run_dir, *extra))
    return Trainer(load_config(args.config, args.overrides), DistInfo(), [], resume=None)


def test_every_trainer_attribute_exists_after_init_and_training_adds_none(tiny_data, tmp_path):
    trainer = build_trainer(tiny_data, tmp_path / "run", "train.max_steps=3", "train.log_every=1")
    attributes = set(vars(trainer))
    assert {"train_loader", "val_loader", "model", "optimizer", "schedule", "state"} <= attributes
    assert trainer.train() == 0
    assert set(vars(trainer)) == attributes  # nothing appears later, so nothing probes with hasattr
    assert trainer.state.step == 3 and trainer.state.finished


def test_the_start_up_objects_are_frozen_while_training_and_unfrozen_after(tiny_data, tmp_path):
    trainer = build_trainer(tiny_data, tmp_path / "run", "train.max_steps=2")
    frozen = []
    step = trainer.train_epoch

    def counting_epoch(sanity_grid):
        frozen.append(gc.get_freeze_count())
        return step(sanity_grid)

    trainer.train_epoch = counting_epoch
    assert gc.get_freeze_count() == 0
    assert trainer.train() == 0
    assert frozen and frozen[0] > 10_000, "torch, the model and the loaders are frozen"
    assert gc.get_freeze_count() == 0, "a dropped trainer's cycles stay collectable"


def test_a_trainer_built_on_a_finished_run_resumes_its_state_in_init(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    assert build_trainer(tiny_data, run_dir, "train.max_steps=2").train() == 0
    again = build_trainer(tiny_data, run_dir, "train.max_steps=2")
    assert again.resume_from == run_dir / "checkpoints" / "last.pt"
    assert (again.state.step, again.state.batch_in_epoch) == (2, 2)
    # the weights are the checkpoint's as soon as __init__ returns
    saved = torch.load(again.resume_from, weights_only=True)["model"]
    for name, value in again.model.state_dict().items():
        assert torch.equal(value, saved[name]), name


def test_data_wait_counts_only_the_time_blocked_in_the_loader_under_accumulation(
    tiny_data, tmp_path
):
    import time

    from pipeline.tracking import NullTracker
    from pipeline.train.meters import TrainMeter

    meter = TrainMeter(DistInfo(), NullTracker(), log_every=1)

    def slow_batches():
        for _ in range(4):
            time.sleep(0.05)  # the loader
            yield torch.zeros(1), torch.zeros(1)

    meter.restart()
    for _ in meter.log_every(slow_batches()):
        time.sleep(0.15)  # a micro-batch's forward and backward: never data wait
    fraction = meter.reduce()["perf/data_wait_frac"]
    assert 0.15 < fraction < 0.4, fraction  # 0.2 s of 0.8 s, not 0.7 of 0.8 as a timer per step saw
