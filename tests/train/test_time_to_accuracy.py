"""Time to accuracy: batch-level mixing and erasing on the device, the weight EMA, the FFCV and
one-cycle schedules, flip-TTA, scoring a checkpoint at several sizes, and bit-exact resumes of
all of it."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_pre_hook
from train_helpers import tiny_args, torchrun

from pipeline.augment import BatchAugment, soft_cross_entropy
from pipeline.checkpoint import load_checkpoint
from pipeline.config import AugmentConfig, load_config
from pipeline.distributed import DistInfo
from pipeline.errors import ConfigError
from pipeline.evaluate import evaluate
from pipeline.models import AlexNet, check_input_sizes
from pipeline.optim import LearningRateSchedule
from pipeline.train.cli import main
from pipeline.train.ema import WeightEMA


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(size, 3, 16, 16, generator=generator(1))
    return images, torch.arange(size) % 4


def test_mixup_blends_each_image_with_its_reverse_and_the_targets_by_the_same_weight():
    augment = BatchAugment(AugmentConfig(mixup_alpha=0.4), num_classes=4)
    images, labels = batch()
    mixed, targets = augment(images, labels, generator(5))
    # the weight is recoverable from any pixel: mixed = lam * x + (1 - lam) * x.flip(0)
    lam = float(((mixed - images.flip(0)) / (images - images.flip(0)))[0, 0, 0, 0])
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.flip(0))
    one_hot = nn.functional.one_hot(labels, 4).float()
    torch.testing.assert_close(targets, lam * one_hot + (1 - lam) * one_hot.flip(0))
    assert 0.0 < lam < 1.0 and torch.allclose(targets.sum(1), torch.ones(8))
    again, _ = augment(images, labels, generator(5))
    assert torch.equal(again, mixed)  # a function of the generator's seed only


def test_cutmix_pastes_one_box_and_weights_the_targets_by_its_real_area():
    augment = BatchAugment(AugmentConfig(cutmix_alpha=1.0), num_classes=4)
    images, labels = batch()
    mixed, targets = augment(images, labels, generator(3))
    pasted = (mixed != images).any(dim=1)[0]  # [H, W] where the partner's pixels are
    area = float(pasted.float().mean())
    rows, columns = pasted.any(1).nonzero(), pasted.any(0).nonzero()
    assert int(pasted.sum()) == len(rows) * len(columns)  # one rectangle
    assert torch.equal(mixed[:, :, pasted], images.flip(0)[:, :, pasted])
    torch.testing.assert_close(targets[0, labels[0]], torch.tensor(1.0 - area))


def test_both_alphas_switch_between_mixup_and_cutmix_per_batch():
    augment = BatchAugment(AugmentConfig(mixup_alpha=0.2, cutmix_alpha=1.0), num_classes=4)
    images, labels = batch()
    kinds = set()
    for seed in range(20):
        mixed, _ = augment(images, labels, generator(seed))
        changed = (mixed != images).float().mean().item()
        kinds.add("mixup" if changed > 0.99 else "cutmix")
    assert kinds == {"mixup", "cutmix"}


def test_random_erasing_zeroes_one_box_per_chosen_image():
    images, labels = batch()
    always = BatchAugment(AugmentConfig(random_erase=1.0), num_classes=4)
    erased, targets = always(images, labels, generator(2))
    assert targets is None  # erasing alone keeps the hard labels
    zeroed = (erased == 0).all(dim=1)  # [B, H, W]
    assert all(0.02 * 256 * 0.5 <= int(mask.sum()) <= 0.33 * 256 * 1.5 for mask in zeroed)
    never = BatchAugment(AugmentConfig(random_erase=0.0), num_classes=4)
    assert not never.enabled


def test_soft_targets_of_smoothed_one_hot_labels_give_the_label_smoothed_loss():
    logits = torch.randn(8, 4, generator=generator(4))
    labels = torch.arange(8) % 4
    augment = BatchAugment(AugmentConfig(mixup_alpha=0.2), 4, label_smoothing=0.1)
    expected = nn.CrossEntropyLoss(label_smoothing=0.1)(logits, labels)
    torch.testing.assert_close(soft_cross_entropy(logits, augment.one_hot(labels)), expected)


def test_the_ema_copies_during_warmup_then_averages_weights_and_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    ema = WeightEMA(model, decay=0.9, warmup_steps=1)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model.train()(torch.randn(4, 3))  # moves the BatchNorm statistics
    ema.update(model, step=1)  # warm-up: an exact copy
    assert all(
        torch.equal(a, b) for a, b in zip(ema.state_dict().values(), model.state_dict().values())
    )
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model, step=2)
    expected = 0.9 * before["0.weight"] + 0.1 * model[0].weight.detach()
    torch.testing.assert_close(ema.state_dict()["0.weight"], expected)
    assert ema.state_dict()["1.num_batches_tracked"] == model[1].num_batches_tracked
    restored = WeightEMA(model, decay=0.9)
    restored.load_state_dict(ema.state_dict())
    assert all(
        torch.equal(a, b) for a, b in zip(restored.state_dict().values(), ema.state_dict().values())
    )


def schedule(*overrides: str, steps_per_epoch: int = 10, epochs: int = 8) -> LearningRateSchedule:
    cfg = load_config(
        None, ["optim.lr=0.8", "data.global_batch_size=256", f"train.epochs={epochs}", *overrides]
    )
    return LearningRateSchedule(cfg, steps_per_epoch, steps_per_epoch * epochs)


def test_onecycle_is_torchs_one_cycle_lr_step_for_step():
    ours = schedule("schedule.name=onecycle", "schedule.onecycle_pct=0.3")
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.8)
    reference = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=0.8,
        total_steps=80,
        pct_start=0.3,
        anneal_strategy="cos",
        div_factor=25,
        final_div_factor=1e4,
        cycle_momentum=False,
    )
    for step in range(80):
        assert ours.lr_at(step) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12)
        optimizer.step()
        reference.step()


def test_linear_is_ffcvs_warmup_to_the_peak_then_decay_to_zero():
    ours = schedule("schedule.name=linear", "schedule.peak_epoch=2")
    for step in range(80):  # FFCV: np.interp(epoch, [0, peak, epochs], [1e-4 lr, lr, 0])
        expected = np.interp(step / 10, [0, 2, 8], [1e-4 * 0.8, 0.8, 0.0])
        assert ours.lr_at(step) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.res_start=128", "data.res_ramp_start=2", "data.res_ramp_end=12"], "does not fit"),
        (["data.res_start=256", "data.res_ramp_end=2"], "between 1 and data.train_crop"),
        (["schedule.name=linear", "schedule.peak_epoch=90"], "schedule.peak_epoch=90"),
        (["eval.best_metric=val/ema_top1"], "needs train.ema_decay"),
        (["augment.mix_prob=1.5"], "is a probability"),
        (["train.ema_decay=1.0"], "train.ema_decay must be in"),
    ],
)
def test_an_impossible_schedule_is_one_line_up_front(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["train.epochs=10", *overrides])


class MirrorSymmetric(nn.Module):
    """Logits of x + mirror(x): bit for bit the same for an image and its mirror (a + b == b + a
    in floating point, element by element)."""

    def __init__(self, classes: int):
        super().__init__()
        self.linear = nn.Linear(3 * 8 * 8, classes)

    def forward(self, x):  # x: [B, 3, 8, 8]
        return self.linear((x + x.flip(3)).flatten(1))


class Lopsided(MirrorSymmetric):
    def forward(self, x):  # x doubled, not mirrored: not mirror-symmetric
        return self.linear((x + x).flatten(1))


class ListLoader:
    batch_size = 4

    def __init__(self, batches):
        self.batches = batches

    def set_epoch(self, epoch, start_batch=0):
        pass

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def test_flip_tta_on_a_mirror_symmetric_model_changes_nothing_and_is_visible_in_the_metrics():
    torch.manual_seed(0)
    images = torch.randint(0, 255, (12, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(12) % 3
    loader = ListLoader([(images[i : i + 4], labels[i : i + 4]) for i in range(0, 12, 4)])
    symmetric = MirrorSymmetric(3)
    plain = evaluate(symmetric, loader, 3, DistInfo(), torch.no_grad).metrics()
    flipped = evaluate(symmetric, loader, 3, DistInfo(), torch.no_grad, flip_tta=True).metrics()
    assert "val/single_top1" in flipped and "val/single_top1" not in plain
    for key, value in plain.items():
        assert flipped[key] == value
        assert flipped[key.replace("val/", "val/single_")] == value
    lopsided = Lopsided(3)
    lopsided.load_state_dict(symmetric.state_dict())
    tta = evaluate(lopsided, loader, 3, DistInfo(), torch.no_grad, flip_tta=True).metrics()
    assert tta["val/loss"] != tta["val/single_loss"]  # averaging with the mirror did something


def test_evaluate_scores_a_checkpoint_at_several_sizes_one_line_each(tiny_data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = tiny_args(tiny_data, run_dir, "train.max_steps=3", "train.ema_decay=0.5")
    assert main(argv) == 0
    capsys.readouterr()
    assert main([*argv, "--evaluate", "--eval-sizes", "72/64", "96/80", "eval.flip_tta=true"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("eval at")]
    assert [line.split(":")[0] for line in lines] == ["eval at 72/64", "eval at 96/80"]
    assert all("val/ema_top1=" in line and "val/single_top1=" in line for line in lines)
    report = json.loads((run_dir / "eval.json").read_text())
    assert [(row["val_resize"], row["val_crop"]) for row in report["sizes"]] == [(72, 64), (96, 80)]
    assert report["flip_tta"] is True and report["val/top1"] == report["sizes"][0]["val/top1"]
    assert main([*argv, "--eval-sizes", "72/64"]) == 2  # a size without --evaluate


@pytest.mark.slow
def test_ema_mixup_cutmix_and_erasing_resume_bit_exact_mid_epoch(tiny_data, tmp_path):
    common = (
        "augment.mixup_alpha=0.2",
        "augment.cutmix_alpha=1.0",
        "augment.random_erase=0.3",
        "train.ema_decay=0.9",
        "train.ema_warmup_steps=3",
        "train.log_every=1",
    )
    assert main(tiny_args(tiny_data, tmp_path / "whole", *common, "train.max_steps=14")) == 0
    assert main(tiny_args(tiny_data, tmp_path / "parts", *common, "train.max_steps=7")) == 0
    assert main(tiny_args(tiny_data, tmp_path / "parts", *common, "train.max_steps=14")) == 0
    whole = load_checkpoint(tmp_path / "whole/checkpoints/last.pt")
    parts = load_checkpoint(tmp_path / "parts/checkpoints/last.pt")
    assert whole["step"] == parts["step"] == 14
    for section in ("model", "ema"):
        for key, value in whole[section].items():
            assert torch.equal(parts[section][key], value), (section, key)
    assert not all(torch.equal(whole["ema"][k], v) for k, v in whole["model"].items())


@pytest.mark.slow
def test_every_ranks_ema_is_identical_under_ddp_and_best_follows_the_named_score(
    tiny_data, tmp_path
):
    run_dir = tmp_path / "run"
    argv = tiny_args(
        tiny_data,
        run_dir,
        "train.epochs=2",
        "train.ema_decay=0.8",
        "eval.best_metric=val/ema_top1",
        "augment.mixup_alpha=0.2",
    )
    result = torchrun(2, argv)
    assert result.returncode == 0, result.stderr[-3000:]
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    first, second = last["replica_fingerprints"]
    assert torch.equal(first, second)
    # [sum, sum of squares] per parameter tensor, of the weights and of the EMA (AlexNet has no
    # buffers: every state_dict entry is a parameter)
    assert first.numel() == 2 * 2 * len(last["model"])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ema_scores = [row["val/ema_top1"] for row in rows if "val/ema_top1" in row]
    assert last["best_top1"] == max(ema_scores)


RAMP = (
    "train.epochs=3",
    "data.train_crop=96",
    "data.val_crop=96",
    "data.val_resize=110",
    "data.res_start=64",  # epochs 0 and 1 at 64 px, epoch 2 at 96 px
    "data.res_ramp_start=1",
    "data.res_ramp_end=2",
    "train.log_every=1",
)


@pytest.mark.parametrize("backend", ["folder", "wds", "dali"])
def test_a_run_killed_at_the_resolution_change_resumes_bit_identical(
    backend, tiny_data, tiny_shards, tmp_path
):
    """The first run stops at the end of epoch 1 (the last 64 px batch), the second is killed by
    a real SIGTERM in its first step, the first at 96 px, and the third finishes: the weights and
    every logged loss match one uninterrupted run, and train/res says 64 then 96."""
    data = tiny_shards if backend == "wds" else tiny_data
    common = (*RAMP, f"data.backend={backend}", "data.dali_decode=cpu")
    assert main(tiny_args(data, tmp_path / "whole", *common)) == 0
    parts = tiny_args(data, tmp_path / "parts", *common)
    assert main([*parts, "train.max_steps=20"]) == 0

    def sigterm_in_the_first_step(module, args):
        if isinstance(module, AlexNet) and module.training:
            os.kill(os.getpid(), signal.SIGTERM)

    handle = register_module_forward_pre_hook(sigterm_in_the_first_step)
    try:
        assert main(parts) == 75
    finally:
        handle.remove()
    middle = load_checkpoint(tmp_path / "parts/checkpoints/last.pt")
    assert (middle["epoch"], middle["batch_in_epoch"], middle["step"]) == (2, 1, 21)
    assert main(parts) == 0
    whole = load_checkpoint(tmp_path / "whole/checkpoints/last.pt")
    resumed = load_checkpoint(tmp_path / "parts/checkpoints/last.pt")
    assert whole["step"] == resumed["step"] == 30
    for key, value in whole["model"].items():
        assert torch.equal(resumed["model"][key], value), key

    def train_rows(run_dir):
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        trained = [row for row in rows if "train/loss" in row]
        return {row["step"]: (row["train/loss"], row["train/res"]) for row in trained}

    logged = train_rows(tmp_path / "whole")
    assert train_rows(tmp_path / "parts") == logged and len(logged) == 30
    assert [logged[step][1] for step in (1, 20, 21, 30)] == [64, 64, 96, 96]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.res_start=48", "data.res_ramp_end=2"], "res_start=48 is too small for alexnet"),
        (
            ["model.arch=vit_b_16", "data.res_start=160", "data.res_ramp_end=2"],
            "vit_b_16 is built for one input size",
        ),
    ],
)
def test_a_ramp_below_the_models_minimum_or_on_a_fixed_size_model_is_one_line(overrides, message):
    config = load_config(None, ["train.epochs=10", *overrides])
    with pytest.raises(ConfigError, match=message) as caught:
        check_input_sizes(config)
    assert "\n" not in str(caught.value)
