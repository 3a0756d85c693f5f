"""Checkpoint files: atomic writes, weights_only loading and its refusal, RNG round trips."""

from __future__ import annotations

import collections
import pickle
import random

import numpy as np
import pytest
import torch
from train_helpers import tiny_args

from pipeline.checkpoint import (
    CheckpointError,
    atomic_save,
    capture_rng_state,
    find_latest,
    load_checkpoint,
    restore_rng_state,
    save_checkpoints,
)
from pipeline.train.cli import main


class NotATensor:
    """Anything pickled by class reference: weights_only loading must refuse it."""

    def __init__(self, value):
        self.value = value


def test_a_checkpoint_of_model_optimizer_and_scaler_state_loads_with_weights_only(tmp_path):
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": capture_rng_state(),
        "epoch": 3,
        "step": 17,
        "config": {"optim": {"betas": [0.9, 0.999]}},
    }
    save_checkpoints(state, tmp_path, is_best=True, epoch_file=True)
    assert find_latest(tmp_path) == tmp_path / "checkpoints/last.pt"
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt")) == [
        "best.pt",
        "epoch_003.pt",
        "last.pt",
    ]
    loaded = load_checkpoint(tmp_path / "checkpoints/best.pt")
    assert torch.equal(
        loaded["optimizer"]["state"][0]["momentum_buffer"],
        optimizer.state_dict()["state"][0]["momentum_buffer"],
    )
    assert loaded["scaler"]["scale"] == 1024.0 and loaded["step"] == 17


def test_a_checkpoint_that_needs_pickled_classes_is_refused_in_one_line(tmp_path):
    path = tmp_path / "unsafe.pt"
    torch.save({"model": {}, "extra": NotATensor(1)}, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert "\n" not in message and "refusing" in message and "weights_only" in message


def test_resuming_from_an_unsafe_checkpoint_exits_2_with_one_error_line(
    tmp_path, capsys, tiny_data
):
    path = tmp_path / "unsafe.pt"
    torch.save({"model": collections.OrderedDict(), "extra": NotATensor(1)}, path)
    code = main([*tiny_args(tiny_data, tmp_path / "run"), "--resume", str(path)])
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "refusing" in errors[0]


def test_a_failed_save_leaves_the_previous_checkpoint_intact_and_no_temp_file(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"step": 1}, path)
    with pytest.raises((AttributeError, pickle.PicklingError)):
        atomic_save({"step": 2, "bad": lambda: None}, path)  # lambdas cannot be pickled
    assert load_checkpoint(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    atomic_save({"rng": capture_rng_state()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_training_start_up_removes_temps_left_by_a_killed_save_and_nothing_else(
    tiny_data, tmp_path
):
    checkpoints = tmp_path / "run/checkpoints"
    checkpoints.mkdir(parents=True)
    stale = [checkpoints / ".last.pt.k2j4h1.tmp", checkpoints / ".best.pt.9x8y7z.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    (checkpoints / "notes.tmp").write_text("mine")
    assert main(tiny_args(tiny_data, tmp_path / "run", "train.max_steps=1")) == 0
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "best.pt",
        "best.pt.sha256",
        "last.pt",
        "last.pt.sha256",
        "notes.tmp",
    ]
