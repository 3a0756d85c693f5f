"""Schedules against torch.optim.lr_scheduler, warmup, linear lr scaling and weight-decay groups."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.config import ModelConfig, build_config
from pipeline.models import build_model
from pipeline.optim import LearningRateSchedule, build_optimizer, scaled_lr


def make_config(**schedule):
    return build_config(
        {
            "optim": {"lr": 0.1},
            "data": {"global_batch_size": 512},
            "schedule": schedule,
            "train": {"epochs": 9},
        }
    )


def reference_optimizer(lr: float):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_lr_is_per_256_images_and_scales_linearly_with_the_global_batch():
    assert scaled_lr(make_config()) == pytest.approx(0.2)


def test_step_schedule_matches_torch_steplr_at_every_step():
    cfg = make_config(name="step", step_epochs=3, gamma=0.1)
    steps_per_epoch = 5
    schedule = LearningRateSchedule(cfg, steps_per_epoch, total_steps=9 * steps_per_epoch)
    optimizer = reference_optimizer(0.2)
    reference = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.1)
    for epoch in range(9):
        for inner in range(steps_per_epoch):
            assert schedule.lr_at(epoch * steps_per_epoch + inner) == pytest.approx(
                optimizer.param_groups[0]["lr"], rel=1e-12
            )
        optimizer.step()
        reference.step()


def test_cosine_schedule_matches_torch_cosine_annealing_stepped_per_step():
    cfg = make_config(name="cosine", min_lr=0.001)
    schedule = LearningRateSchedule(cfg, steps_per_epoch=7, total_steps=63)
    optimizer = reference_optimizer(0.2)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=63, eta_min=0.001)
    for step in range(63):
        assert schedule.lr_at(step) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-9)
        optimizer.step()
        reference.step()


def test_plateau_schedule_matches_reduce_lr_on_plateau_in_max_mode_and_survives_a_checkpoint():
    cfg = make_config(name="plateau", plateau_patience=2, gamma=0.5)
    schedule = LearningRateSchedule(cfg, steps_per_epoch=4, total_steps=400)
    optimizer = reference_optimizer(0.2)
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=0.5, patience=2, threshold=0.0
    )
    accuracies = [10, 20, 20, 19, 20, 25, 25, 25, 25, 24, 24, 24, 24, 30]
    for index, accuracy in enumerate(accuracies):
        schedule.observe(accuracy)
        reference.step(accuracy)
        assert schedule.lr_at(100) == pytest.approx(optimizer.param_groups[0]["lr"]), (
            f"after {index + 1} evals"
        )
        if index == 6:  # checkpoint round trip mid-way
            state = schedule.state_dict()
            schedule = LearningRateSchedule(cfg, steps_per_epoch=4, total_steps=400)
            schedule.load_state_dict(state)
    assert schedule.plateau_decays >= 2


def test_warmup_rises_linearly_per_step_then_hands_over_to_the_schedule():
    cfg = make_config(name="constant", warmup_epochs=0.5)
    schedule = LearningRateSchedule(cfg, steps_per_epoch=8, total_steps=80)
    assert [schedule.lr_at(s) for s in range(5)] == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.2])


def test_schedule_is_a_function_of_the_step_so_a_mid_epoch_resume_gets_the_same_lr():
    cfg = make_config(name="cosine", warmup_epochs=1)
    first = LearningRateSchedule(cfg, steps_per_epoch=10, total_steps=90)
    resumed = LearningRateSchedule(cfg, steps_per_epoch=10, total_steps=90)
    resumed.load_state_dict(first.state_dict())
    assert [first.lr_at(s) for s in range(37, 90)] == [resumed.lr_at(s) for s in range(37, 90)]
    assert not math.isclose(first.lr_at(5), first.lr_at(15))


@pytest.mark.parametrize(
    "name,expected",
    [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)],
)
def test_no_decay_on_biases_and_norms_puts_them_in_a_zero_decay_group(name, expected):
    cfg = build_config(
        {
            "optim": {
                "name": name,
                "no_decay_bias_norm": True,
                "weight_decay": 5e-4,
                "nesterov": name == "sgd",
            }
        }
    )
    model = build_model(
        ModelConfig(arch="alexnet_bn", width_mult=0.25, classifier_width=16), num_classes=3
    )
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, expected)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
