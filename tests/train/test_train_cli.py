"""pipeline.train through main(argv) in-process (one rank): run dir, rerun, --evaluate, --check,
AMP fp16, early stopping, fine-tuning, accumulation, W&B offline, and one-line errors (exit 2)."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import time

import pytest
import torch
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.optim.optimizer import register_optimizer_step_post_hook
from train_helpers import tiny_args

from pipeline.checkpoint import load_checkpoint
from pipeline.models import AlexNet
from pipeline.tracking.cli import main as tracking_main
from pipeline.tracking.history import read_wandb_history
from pipeline.train.cli import main

STEPS_PER_EPOCH = 10  # 160 train images / global batch 16


def final_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith("final: ")]
    assert len(lines) == 1, text
    return lines[0]


def read_rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_fills_the_run_dir_and_a_rerun_only_evaluates_and_evaluate_agrees(
    tiny_data, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    argv = tiny_args(
        tiny_data,
        run_dir,
        "train.epochs=2",
        "train.log_every=2",
        "log.plots=true",
        "train.sanity_grid=true",
        "train.save_every=1",
    )
    assert main(argv) == 0
    first = final_line(capsys.readouterr().out)
    assert (run_dir / "config.yaml").read_text().count("global_batch_size: 16") == 1
    launch = json.loads((run_dir / "launches.jsonl").read_text().splitlines()[0])
    assert launch["git_sha"] and "pipeline.train" in launch["command"] and launch["world_size"] == 1
    rows = read_rows(run_dir)
    train_rows = [r for r in rows if "train/loss" in r]
    val_rows = [r for r in rows if "val/top1" in r]
    assert [r["step"] for r in train_rows] == list(range(2, 21, 2))
    assert {"train/top1", "opt/lr", "perf/images_per_s", "perf/data_wait_frac", "epoch"} <= set(
        train_rows[0]
    )
    assert [r["step"] for r in val_rows] == [10, 20]
    assert {"val/top5", "val/loss", "val/macro_f1"} <= set(val_rows[0])
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt")) == [
        "best.pt",
        "epoch_001.pt",
        "epoch_002.pt",
        "last.pt",
    ]
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == [
        "accuracy.png",
        "loss.png",
        "predictions.png",
        "train_batch.png",
    ]
    csv_rows = list(csv.DictReader((run_dir / "per_class_accuracy.csv").open()))
    assert len(csv_rows) == 4 and sum(int(r["support"]) for r in csv_rows) == 17
    assert csv_rows[1]["name"] == "goldfish, Carassius auratus"
    state = load_checkpoint(run_dir / "checkpoints/last.pt")
    assert (state["epoch"], state["step"], state["batch_in_epoch"], state["finished"]) == (
        2,
        20,
        0,
        True,
    )
    assert f"val/top1={state['last_eval']['val/top1']:.2f}" in first

    assert main(argv) == 0  # same run dir: auto-resume finds a finished run and only evaluates
    assert final_line(capsys.readouterr().out) == first
    assert load_checkpoint(run_dir / "checkpoints/last.pt")["step"] == 20

    assert main([*argv, "--evaluate"]) == 0
    assert final_line(capsys.readouterr().out) == first
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["val/num_samples"] == 17 and report["weights"].endswith("last.pt")

    # on demand: `python -m pipeline.tracking plots RUN_DIR` redraws curves and the prediction grid
    shutil.rmtree(run_dir / "plots")
    assert tracking_main(["plots", str(run_dir)]) == 0
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == [
        "accuracy.png",
        "loss.png",
        "predictions.png",
    ]
    capsys.readouterr()

    # plain state_dict weights (as torchvision publishes them) evaluate the same through --init-from
    weights = tmp_path / "weights.pth"
    torch.save(load_checkpoint(run_dir / "checkpoints/last.pt")["model"], weights)
    other = tiny_args(tiny_data, tmp_path / "other")
    assert main([*other, "--evaluate", "--init-from", str(weights)]) == 0
    assert final_line(capsys.readouterr().out) == first


@pytest.mark.parametrize("backend", ["folder", "wds"])
def test_a_run_stopped_mid_epoch_resumes_at_the_exact_batch_and_matches_an_uninterrupted_run(
    backend, tiny_data, tiny_shards, tmp_path
):
    """max_steps=13 stops 3 batches into epoch 2 and saves; a rerun with max_steps=25 resumes there
    (set_epoch(1, start_batch=3)) and must end bit-identical to one uninterrupted 25-step run.
    max_steps truncates a run but never changes its lr schedule, so the two runs share one."""
    data = tiny_shards if backend == "wds" else tiny_data
    # wds with 2 loader workers: the resume point must hold across the per-worker split of shards
    workers = 2 if backend == "wds" else 0
    common = (f"data.backend={backend}", f"data.num_workers={workers}", "train.log_every=1")
    assert main(tiny_args(data, tmp_path / "whole", *common, "train.max_steps=25")) == 0
    assert main(tiny_args(data, tmp_path / "parts", *common, "train.max_steps=13")) == 0
    middle = load_checkpoint(tmp_path / "parts/checkpoints/last.pt")
    assert (middle["epoch"], middle["batch_in_epoch"], middle["step"]) == (1, 3, 13)
    assert main(tiny_args(data, tmp_path / "parts", *common, "train.max_steps=25")) == 0
    whole = load_checkpoint(tmp_path / "whole/checkpoints/last.pt")
    parts = load_checkpoint(tmp_path / "parts/checkpoints/last.pt")
    assert whole["step"] == parts["step"] == 25
    for key, value in whole["model"].items():
        assert torch.equal(parts["model"][key], value), key
    whole_losses = {
        r["step"]: r["train/loss"] for r in read_rows(tmp_path / "whole") if "train/loss" in r
    }
    parts_losses = {
        r["step"]: r["train/loss"] for r in read_rows(tmp_path / "parts") if "train/loss" in r
    }
    assert parts_losses == whole_losses and len(whole_losses) == 25


@pytest.mark.parametrize("when", ["last step of the epoch", "epoch-end eval"])
def test_a_sigterm_at_an_epochs_end_resumes_with_that_epochs_eval_and_the_uninterrupted_weights(
    when, tiny_data, tmp_path, capsys
):
    """A real SIGTERM to this process, sent from a forward pre-hook either in the epoch's 10th
    (last) training step or in its first eval batch. Either way last.pt must hold the point before
    the epoch-end eval (epoch 0, batch 10), written without finishing that eval, and the resumed run
    must run that eval (val rows at steps 10 and 20) and end with the uninterrupted weights."""
    common = ("train.epochs=2", "train.save_every=1")
    assert main(tiny_args(tiny_data, tmp_path / "whole", *common)) == 0
    run_dir = tmp_path / "parts"
    forwards = {"train": 0, "eval": 0}

    def send_sigterm(module, args):
        if not isinstance(module, AlexNet):
            return
        forwards["train" if module.training else "eval"] += 1
        if (
            when == "last step of the epoch"
            and module.training
            and forwards["train"] == STEPS_PER_EPOCH
        ) or (when == "epoch-end eval" and not module.training and forwards["eval"] == 1):
            os.kill(os.getpid(), signal.SIGTERM)

    handle = register_module_forward_pre_hook(send_sigterm)
    try:
        assert main(tiny_args(tiny_data, run_dir, *common)) == 75
    finally:
        handle.remove()
    stopped = load_checkpoint(run_dir / "checkpoints/last.pt")
    assert (stopped["epoch"], stopped["batch_in_epoch"], stopped["step"], stopped["last_eval"]) == (
        0,
        10,
        10,
        {},
    )
    assert not any("val/top1" in row for row in read_rows(run_dir))
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt")) == ["last.pt"]
    capsys.readouterr()

    assert main(tiny_args(tiny_data, run_dir, *common)) == 0
    assert "re-planned" not in capsys.readouterr().err
    assert [row["step"] for row in read_rows(run_dir) if "val/top1" in row] == [10, 20]
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt")) == [
        "best.pt",
        "epoch_001.pt",
        "epoch_002.pt",
        "last.pt",
    ]
    whole = load_checkpoint(tmp_path / "whole/checkpoints/last.pt")
    parts = load_checkpoint(run_dir / "checkpoints/last.pt")
    assert (parts["epoch"], parts["step"]) == (whole["epoch"], whole["step"]) == (2, 20)
    for key, value in whole["model"].items():
        assert torch.equal(parts["model"][key], value), key
    assert parts["last_eval"] == whole["last_eval"]


def test_check_passes_on_the_tiny_data_and_fails_when_the_overfit_budget_is_too_small(
    tiny_data, tmp_path, capsys
):
    """The passing run is fp16 (CPU autocast): its overfit steps go through a GradScaler, as
    training's do."""
    assert main([*tiny_args(tiny_data, tmp_path / "run", "train.precision=fp16"), "--check"]) == 0
    out = capsys.readouterr().out
    assert (
        f"vs ln(4) = {math.log(4):.4f}: ok" in out
        and "check overfit one batch of 16: ok: 100% in" in out
    )
    assert "(fp16 with GradScaler, loss scale" in out
    assert (
        main([*tiny_args(tiny_data, tmp_path / "run"), "train.check_overfit_steps=1", "--check"])
        == 1
    )
    assert "FAILED" in capsys.readouterr().out


def test_fp16_autocast_with_grad_scaler_steps_once_per_batch_and_resumes_the_scaler_state(
    tiny_data, tmp_path
):
    """CPU autocast supports float16 in torch 2.13, so this runs the real fp16 + GradScaler path."""
    calls = []
    handle = register_optimizer_step_post_hook(lambda optimizer, args, kwargs: calls.append(1))
    try:
        run_dir = tmp_path / "run"
        assert (
            main(
                tiny_args(
                    tiny_data,
                    run_dir,
                    "train.precision=fp16",
                    "train.max_steps=6",
                    "train.log_every=1",
                )
            )
            == 0
        )
        first = load_checkpoint(run_dir / "checkpoints/last.pt")
        # a skipped step (inf/nan gradients) halves the scale; every other batch steps exactly once
        backoffs = round(math.log2(65536.0 / first["scaler"]["scale"]))
        assert first["step"] == 6 and len(calls) + backoffs == 6 and len(calls) >= 4
        if backoffs == 0:
            assert first["scaler"]["_growth_tracker"] == 6  # one successful step per batch
        rows = read_rows(run_dir)
        assert [r["opt/loss_scale"] for r in rows if "opt/loss_scale" in r][-1] == first["scaler"][
            "scale"
        ]

        calls.clear()
        assert (
            main(
                tiny_args(
                    tiny_data,
                    run_dir,
                    "train.precision=fp16",
                    "train.max_steps=9",
                    "train.log_every=1",
                )
            )
            == 0
        )
        second = load_checkpoint(run_dir / "checkpoints/last.pt")
        more_backoffs = round(math.log2(first["scaler"]["scale"] / second["scaler"]["scale"]))
        assert second["step"] == 9 and len(calls) + more_backoffs == 3
        if (
            backoffs == 0 and more_backoffs == 0
        ):  # the growth tracker continued from the checkpoint, not from 0
            assert second["scaler"]["_growth_tracker"] == 9
    finally:
        handle.remove()


def test_early_stopping_ends_training_after_patience_evals_without_improvement(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    # a vanishing lr cannot move val top-1, so evals 2 and 3 do not improve on eval 1
    assert (
        main(
            tiny_args(
                tiny_data,
                run_dir,
                "train.epochs=6",
                "train.early_stop_patience=2",
                "optim.lr=1.0e-12",
            )
        )
        == 0
    )
    state = load_checkpoint(run_dir / "checkpoints/last.pt")
    assert (
        state["epoch"],
        state["step"],
        state["finished"],
        state["evals_without_improvement"],
    ) == (3, 30, True, 2)


def test_finetuning_loads_the_body_freezes_features_and_trains_a_new_head(tiny_data, tmp_path):
    source = tmp_path / "source"
    assert main(tiny_args(tiny_data, source, "train.max_steps=3")) == 0
    weights = source / "checkpoints/last.pt"
    run_dir = tmp_path / "finetune"
    assert (
        main(
            tiny_args(
                tiny_data,
                run_dir,
                "train.max_steps=4",
                "--finetune",
                str(weights),
                "--freeze",
                "features",
            )
        )
        == 0
    )
    before, after = (
        load_checkpoint(weights)["model"],
        load_checkpoint(run_dir / "checkpoints/last.pt")["model"],
    )
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("features."))
    assert not torch.equal(before["classifier.6.weight"], after["classifier.6.weight"])
    assert not torch.equal(before["classifier.1.weight"], after["classifier.1.weight"])


def test_a_frozen_finetune_run_resumes_with_its_features_still_frozen_and_evaluates_its_own_head(
    tiny_data, tmp_path, capsys
):
    """The resume path builds the model without loading the fine-tune weights; it must still freeze
    the conv base, or the optimizer has more parameters than the checkpoint's and refuses it.
    --evaluate with the same flags scores the run's last.pt, not the backbone with a new random
    head."""
    source = tmp_path / "source"
    assert main(tiny_args(tiny_data, source, "train.max_steps=2")) == 0
    weights = source / "checkpoints/last.pt"
    run_dir = tmp_path / "finetune"
    finetune = ("--finetune", str(weights), "--freeze", "features")
    assert main([*tiny_args(tiny_data, run_dir, "train.max_steps=3"), *finetune]) == 0
    capsys.readouterr()
    assert main([*tiny_args(tiny_data, run_dir, "train.max_steps=5"), *finetune]) == 0
    before, after = (
        load_checkpoint(weights)["model"],
        load_checkpoint(run_dir / "checkpoints/last.pt"),
    )
    assert after["step"] == 5
    assert all(
        torch.equal(before[k], after["model"][k]) for k in before if k.startswith("features.")
    )
    trained = final_line(capsys.readouterr().out)
    assert main([*tiny_args(tiny_data, run_dir), *finetune, "--evaluate"]) == 0
    assert final_line(capsys.readouterr().out) == trained
    assert json.loads((run_dir / "eval.json").read_text())["weights"] == str(
        run_dir / "checkpoints/last.pt"
    )
    # model.finetune alone, with no fine-tune checkpoint to score: one line, not a random head's
    # accuracy
    assert main([*tiny_args(tiny_data, tmp_path / "empty"), *finetune, "--evaluate"]) == 2
    assert "model.finetune" in capsys.readouterr().err


def test_gradient_accumulation_takes_the_same_steps_as_one_big_batch(tiny_data, tmp_path):
    common = ("train.max_steps=3", "model.dropout=0.0")
    assert main(tiny_args(tiny_data, tmp_path / "one", *common)) == 0
    assert main(tiny_args(tiny_data, tmp_path / "two", *common, "optim.grad_accum_steps=2")) == 0
    one = load_checkpoint(tmp_path / "one/checkpoints/last.pt")
    two = load_checkpoint(tmp_path / "two/checkpoints/last.pt")
    assert one["step"] == two["step"] == 3 and two["batch_in_epoch"] == 6
    for key in one["model"]:
        torch.testing.assert_close(one["model"][key], two["model"][key], rtol=1e-4, atol=1e-5)


def settled_wandb_history(run_dir, keys, timeout_s=30.0):
    """The offline run's history once it holds `keys`: wandb-core, a separate process, can still be
    flushing the .wandb log for a moment after run.finish() returns (seen once on a loaded
    machine)."""
    deadline = time.monotonic() + timeout_s
    while True:
        history = read_wandb_history(run_dir)
        if keys <= set().union(*history) or time.monotonic() > deadline:
            return history
        time.sleep(0.5)


def test_wandb_offline_run_holds_the_logged_keys_and_the_api_key_never_reaches_disk(
    tiny_data, tmp_path, capsys, monkeypatch
):
    secret = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "run"
    argv = [
        *tiny_args(tiny_data, run_dir, "train.max_steps=4", "train.log_every=2"),
        "log.wandb=offline",
    ]
    assert main(argv) == 0
    logged = {
        "train/loss",
        "train/top1",
        "opt/lr",
        "perf/images_per_s",
        "perf/data_wait_frac",
        "val/top1",
        "val/top5",
        "val/loss",
        "val/macro_f1",
    }
    history = settled_wandb_history(run_dir, logged)
    assert logged <= set().union(*history)
    assert [row["train/loss"] for row in history if "train/loss" in row] == [
        row["train/loss"] for row in read_rows(run_dir) if "train/loss" in row
    ]
    run_id = load_checkpoint(run_dir / "checkpoints/last.pt")["wandb_run_id"]
    assert run_id and list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    captured = capsys.readouterr()
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in captured.out + captured.err

    # resuming continues the same W&B run id
    assert (
        main(
            [
                *tiny_args(tiny_data, run_dir, "train.max_steps=6", "train.log_every=2"),
                "log.wandb=offline",
            ]
        )
        == 0
    )
    assert load_checkpoint(run_dir / "checkpoints/last.pt")["wandb_run_id"] == run_id
    assert len(list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))) >= 1
    assert {"train/loss"} <= set().union(*settled_wandb_history(run_dir, {"train/loss"}))


@pytest.mark.parametrize(
    "extra,expected",
    [
        (["optim.lrr=0.1"], "unknown config key optim.lrr"),
        (["data.train_dir=/nonexistent/train"], "does not exist"),
        (["data.global_batch_size=15", "optim.grad_accum_steps=2"], "not divisible"),
        (["data.train_crop=32"], "too small for alexnet: use at least 63"),
        (["train.precision=fp8"], "is not one of"),
        (["--resume", "/nonexistent/last.pt"], "--resume /nonexistent/last.pt does not exist"),
        (["--init-from", "/nonexistent/weights.pth"], "does not exist"),
    ],
)
def test_bad_config_or_paths_exit_2_with_one_error_line(
    tiny_data, tmp_path, capsys, extra, expected
):
    assert main([*tiny_args(tiny_data, tmp_path / "run"), *extra]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], err
    assert "Traceback" not in err


def test_overrides_may_follow_any_flag_including_resume():
    from pipeline.train.cli import parse_args

    args = parse_args(
        [
            "--config",
            "c.yaml",
            "a.b=1",
            "--resume",
            "last.pt",
            "train.max_steps=6",
            "--evaluate",
            "c.d=2",
        ]
    )
    assert args.overrides == ["a.b=1", "train.max_steps=6", "c.d=2"]
    assert str(args.resume) == "last.pt" and args.evaluate


def test_a_missing_config_file_exits_2(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: config file")


def test_a_mid_epoch_resume_under_a_larger_global_batch_is_replanned_not_a_traceback(
    tiny_data, tmp_path, capsys
):
    """Stopped at batch 9 of epoch 1 with batches of 16 (144 samples seen); a requeue with global
    batch 64 plans 2 batches per epoch, so batch 9 does not exist: the 16 samples not yet read
    make one short batch, at batch 1 of epoch 1 (its last), then epoch 2 follows the new plan."""
    run_dir = tmp_path / "run"
    assert main(tiny_args(tiny_data, run_dir, "train.max_steps=19")) == 0
    middle = load_checkpoint(run_dir / "checkpoints/last.pt")
    assert (middle["epoch"], middle["batch_in_epoch"]) == (1, 9)
    capsys.readouterr()
    assert (
        main(
            tiny_args(
                tiny_data,
                run_dir,
                "data.global_batch_size=64",
                "train.epochs=20",
                "train.max_steps=21",
            )
        )
        == 0
    )
    assert "epoch's 16 samples not yet read are spread over them" in capsys.readouterr().err
    after = load_checkpoint(run_dir / "checkpoints/last.pt")
    assert (after["epoch"], after["batch_in_epoch"], after["step"]) == (2, 1, 21)


def test_resuming_with_another_model_or_optimizer_is_one_line_and_new_hyperparameters_take_effect(
    tiny_data, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    assert main(tiny_args(tiny_data, run_dir, "train.max_steps=2")) == 0
    capsys.readouterr()
    for change, expected in (
        ("model.arch=alexnet_bn", "model.arch ('alexnet' → 'alexnet_bn')"),
        ("model.width_mult=0.5", "model.width_mult (0.25 → 0.5)"),
        ("optim.no_decay_bias_norm=true", "optim.no_decay_bias_norm (False → True)"),
        ("optim.name=sgd", "holds adamw state but optim.name=sgd"),
    ):
        assert main(tiny_args(tiny_data, run_dir, "train.max_steps=3", change)) == 2, change
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and expected in errors[0] and "Traceback" not in err, err
    # a changed weight decay is applied (and said), not silently replaced by the checkpoint's 0.01
    assert main(tiny_args(tiny_data, run_dir, "train.max_steps=3", "optim.weight_decay=0.5")) == 0
    assert "weight_decay 0.01 → 0.5" in capsys.readouterr().err
    state = load_checkpoint(run_dir / "checkpoints/last.pt")
    assert state["step"] == 3 and [
        g["weight_decay"] for g in state["optimizer"]["param_groups"]
    ] == [0.5]


def test_an_image_that_does_not_decode_in_a_loader_worker_exits_2_with_the_file_and_what_to_do(
    tiny_data, tmp_path, capsys
):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    bad = min((data / "train").glob("*/*.JPEG"))
    bad.write_bytes(b"not a jpeg")
    assert main(tiny_args(data, tmp_path / "run", "data.num_workers=2", "train.max_steps=12")) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert (
        str(bad) in errors[0]
        and f"python -m preprocess verify {data / 'train'} --decode" in errors[0]
    )
    assert "Traceback" not in err and "DataLoader worker" not in err


def test_a_wds_resume_with_another_worker_count_finishes_the_epoch_exactly_as_uninterrupted(
    tiny_shards, tmp_path, capsys
):
    """The wds order inside an epoch depends on data.num_workers: stopped at batch 3 of epoch 1 with
    2 workers and resumed with 1, epoch 1 must still end bit-identical to an uninterrupted
    2-worker run."""
    common = ("data.backend=wds", "train.log_every=1")
    assert (
        main(
            tiny_args(
                tiny_shards, tmp_path / "whole", *common, "data.num_workers=2", "train.max_steps=20"
            )
        )
        == 0
    )
    assert (
        main(
            tiny_args(
                tiny_shards, tmp_path / "parts", *common, "data.num_workers=2", "train.max_steps=13"
            )
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            tiny_args(
                tiny_shards, tmp_path / "parts", *common, "data.num_workers=1", "train.max_steps=20"
            )
        )
        == 0
    )
    assert (
        "epoch 1 finishes with 2 loader workers and later epochs use 1" in capsys.readouterr().err
    )
    whole = load_checkpoint(tmp_path / "whole/checkpoints/last.pt")
    parts = load_checkpoint(tmp_path / "parts/checkpoints/last.pt")
    assert (
        whole["step"] == parts["step"] == 20
    )  # the end of epoch 1: later epochs follow the new count
    for key, value in whole["model"].items():
        assert torch.equal(parts["model"][key], value), key
