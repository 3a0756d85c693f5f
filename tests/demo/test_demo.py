"""The embedded demo end to end: real digits → prepare → 2-rank gloo DDP → far above chance.

    .venv/bin/pytest tests/demo/test_demo.py          # ~2 minutes on 2 cores: runs `--fast` once

`--fast` is the same code as `make demo` with fewer epochs (tools.demo.FAST_EPOCHS).
"""

from __future__ import annotations

import contextlib
import io
import json
import re

import pytest
from PIL import Image

from pipeline.checkpoint import load_checkpoint
from pipeline.predict import main as predict_main
from pipeline.tracking.history import read_wandb_history
from tools.demo import main
from tools.demo_report import EXPECTED_ARTEFACTS, find_artefacts

# Chance is 10 % (10 classes). The fast path reaches ~80-90 % here; 50 % is five times chance
# and still fails loudly if the labels, the val sort or the class order were scrambled.
FAST_TOP1_THRESHOLD = 50.0


@pytest.fixture(scope="module")
def fast_demo(tmp_path_factory):
    """Run `python -m tools.demo --fast --quiet` once; return (workdir, exit code, stdout)."""
    workdir = tmp_path_factory.mktemp("demo")
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = main(["--workdir", str(workdir), "--fast", "--quiet"])
    return workdir, code, output.getvalue()


@pytest.mark.slow
def test_fast_demo_learns_far_above_chance_and_says_so(fast_demo):
    workdir, code, output = fast_demo
    assert code == 0, output
    match = re.search(r"val top-1 (?P<top1>[0-9.]+)%  top-5 (?P<top5>[0-9.]+)%", output)
    assert match, output
    top1, top5 = float(match["top1"]), float(match["top5"])
    assert top1 >= FAST_TOP1_THRESHOLD, output
    assert top5 >= top1
    assert "chance is 10%" in output
    assert f"demo passed: val top-1 {top1:.2f}% >= the required 50%" in output
    final = json.loads(
        [
            line
            for line in (workdir / "run-wds-fast" / "metrics.jsonl").read_text().splitlines()
            if "val/top1" in line
        ][-1]
    )
    assert abs(final["val/top1"] - top1) < 0.01  # the printed figure is the logged one


@pytest.mark.slow
def test_fast_demo_leaves_every_artefact_it_lists(fast_demo):
    workdir, code, output = fast_demo
    assert code == 0, output
    run_dir = workdir / "run-wds-fast"
    artefacts = find_artefacts(run_dir)
    assert [name for name in EXPECTED_ARTEFACTS if name not in artefacts] == []
    for name, path in artefacts.items():
        assert str(path) in output, f"{name} is not printed"
    assert "wandb sync " + str(artefacts["W&B offline run"]) in output
    # The W&B offline run really holds the val metrics, not just an empty directory.
    history = read_wandb_history(run_dir)
    assert any("val/top1" in row for row in history)
    assert (artefacts["checkpoints"] / "last.pt").is_file()
    assert (artefacts["checkpoints"] / "best.pt").is_file()
    for name in (
        "accuracy curves PNG",
        "loss curves PNG",
        "sample grid PNG",
        "prediction grid PNG",
    ):
        with Image.open(artefacts[name]) as image:
            assert image.format == "PNG" and min(image.size) >= 64, name
    # Each stage kept its full log.
    assert "final: val/top1=" in (workdir / "logs" / "train.log").read_text()
    assert (workdir / "logs" / "prepare.log").stat().st_size > 0
    # The shards the wds backend trained on, with their manifest and the mapping copied over.
    assert list((workdir / "prepared" / "train").glob("imagenet-train-*.tar"))
    assert (workdir / "prepared" / "train" / "manifest.json").is_file()


@pytest.mark.slow
def test_predict_on_the_demos_val_folders_gives_the_trainers_top1_for_best_pt(fast_demo, capsys):
    """The trainer scored best.pt over the val shards on 2 ranks; predict reads the same images
    from the class folders, one process, through the same val transform."""
    workdir, code, _ = fast_demo
    assert code == 0
    best = workdir / "run-wds-fast" / "checkpoints" / "best.pt"
    trainer_eval = load_checkpoint(best)["last_eval"]
    val_folders = workdir / "prepared" / "folders" / "val"
    assert predict_main(["--checkpoint", str(best), "--evaluate", str(val_folders), "--quiet"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(
        f"evaluate: val/top1={trainer_eval['val/top1']:.2f} val/top5={trainer_eval['val/top5']:.2f}"
    ), line


@pytest.mark.slow
def test_a_failing_stage_is_named_with_its_log(fast_demo, capsys):
    workdir, code, _ = fast_demo
    assert code == 0
    # Raw data and shards are reused; the config is valid but the trainer finds no val data.
    missing = workdir / "no-such-val"
    assert main(["--workdir", str(workdir), "--quiet", f"data.val_dir={missing}"]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("demo failed: stage 'train' failed with exit status")
    assert str(missing) in error  # the worker's own error line, not torchrun's banner
    assert str(workdir / "logs" / "train.log") in error


def test_a_bad_override_fails_before_any_stage_runs(tmp_path, capsys):
    assert main(["--workdir", str(tmp_path), "--quiet", "model.arch=resnet50"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("demo failed: stage 'config' rejected the overrides: model.arch:")
    assert "alexnet" in error and "--arch resnet50" in error
    assert list(tmp_path.iterdir()) == []  # no data built, no run dir touched


def test_a_model_key_the_architecture_refuses_fails_at_the_config_stage(tmp_path, capsys):
    # the trainer's model checks run before any data is built, not inside torchrun
    argv = ["--workdir", str(tmp_path), "--quiet", "--arch", "resnet18", "model.width_mult=0.5"]
    assert main(argv) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("demo failed: stage 'config' rejected the overrides: model.width_mult")
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_workdir_fails_at_the_raw_data_stage(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the workdir should be")
    assert main(["--workdir", str(blocker), "--quiet"]) == 1
    error = capsys.readouterr().err
    assert "stage 'raw data' failed" in error


def test_the_failure_line_is_the_workers_error_not_torchruns_banner():
    from tools.demo_runner import cause_line

    output = (
        "starting\n"
        "[rank0]: Traceback (most recent call last):\n"
        "[rank0]: ValueError: data.train_dir /x does not exist\n"
        "W1123 00:13:40.434000 11638 api.py:1028] Sending process 11745 closing signal SIGTERM\n"
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
        "============================================================\n"
    )
    assert cause_line(output) == "[rank0]: ValueError: data.train_dir /x does not exist"
    assert (
        cause_line("resizing\nerror: /raw has no train images\n")
        == "error: /raw has no train images"
    )
    assert cause_line("one\ntwo\n=====\n") == "two"


@pytest.mark.parametrize(
    ("backend", "train_subdir"),
    [("folder", "folders/train"), ("wds", "train"), ("dali", "train")],
)
def test_each_backend_trains_on_the_data_prepare_wrote_for_it(tmp_path, backend, train_subdir):
    from pipeline.config import load_config
    from tools.demo import DEMO_CONFIG, DemoOptions, train_command, train_overrides

    options = DemoOptions(
        backend=backend, workdir=tmp_path, fast=True, overrides=("optim.lr=0.004",)
    )
    overrides = train_overrides(options, tmp_path / "prepared", tmp_path / "run")
    config = load_config(DEMO_CONFIG, overrides)
    assert config.data.backend == backend
    assert config.data.train_dir == str(tmp_path / "prepared" / train_subdir)
    assert config.data.val_dir == str(tmp_path / "prepared" / train_subdir.replace("train", "val"))
    assert config.train.epochs == 6 and config.optim.lr == 0.004  # user overrides come last
    command = train_command(options, tmp_path / "prepared", tmp_path / "run")
    assert command[1:5] == ["-m", "launch", "--nproc", "2"]
    assert command[command.index("--") + 1 : command.index("--") + 3] == ["-m", "pipeline.train"]


@pytest.mark.slow
def test_a_demo_below_the_required_accuracy_exits_1_after_its_report(fast_demo, capsys):
    workdir, code, _ = fast_demo
    assert code == 0
    assert main(["--workdir", str(workdir), "--quiet", "--epochs", "1", "--min-top1", "101"]) == 1
    captured = capsys.readouterr()
    assert "demo finished: val top-1" in captured.out  # the report still says where everything is
    assert "below the required 101%" in captured.err.strip().splitlines()[-1]


def test_a_run_dir_override_is_refused_before_any_stage_runs(tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    assert main(["--workdir", str(tmp_path / "work"), "--quiet", f"train.run_dir={elsewhere}"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("demo failed: stage 'config' rejected the overrides: train.run_dir=")
    assert "use --workdir DIR" in error
    assert list(tmp_path.iterdir()) == []


def test_shortfalls_name_a_low_accuracy_and_each_missing_artefact(tmp_path):
    from tools.demo_report import DemoResult, shortfalls

    everything = {name: tmp_path / name for name in EXPECTED_ARTEFACTS}
    good = DemoResult(
        top1=80.0, top5=99.0, chance=10.0, run_dir=tmp_path, artefacts=everything, seconds={}
    )
    assert shortfalls(good, 50.0) == []
    low = DemoResult(
        top1=12.0, top5=50.0, chance=10.0, run_dir=tmp_path, artefacts=everything, seconds={}
    )
    assert shortfalls(low, 50.0) == [
        (
            "val top-1 12.00% is below the required 50% (chance 10%): the run did not learn; "
            f"see {tmp_path}"
        )
    ]
    assert shortfalls(low, 0.0) == []
    partial = {k: v for k, v in everything.items() if k != "prediction grid PNG"}
    missing = DemoResult(
        top1=80.0, top5=99.0, chance=10.0, run_dir=tmp_path, artefacts=partial, seconds={}
    )
    assert shortfalls(missing, 50.0) == [f"missing artefacts: prediction grid PNG (see {tmp_path})"]


@pytest.mark.slow
def test_the_demo_trains_a_torchvision_resnet18_far_above_chance(fast_demo):
    workdir = fast_demo[0]  # its raw data and shards are reused; the run dir is resnet18's own
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        # 3 epochs: ResNet-18 is past 80% there (AlexNet's --fast needs 6)
        code = main(["--workdir", str(workdir), "--epochs", "3", "--quiet", "--arch", "resnet18"])
    assert code == 0, output.getvalue()  # code 0: top-1 >= 50%, five times chance
    match = re.search(r"val top-1 (?P<top1>[0-9.]+)%", output.getvalue())
    assert match and float(match["top1"]) >= FAST_TOP1_THRESHOLD, output.getvalue()
    launches = (workdir / "run-wds-resnet18" / "launches.jsonl").read_text().splitlines()
    launch = json.loads(launches[0])
    assert launch["model/arch"] == "resnet18" and launch["model/params"] == 11_181_642


def test_an_unknown_demo_architecture_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["--workdir", str(tmp_path), "--arch", "resnet5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model.arch='resnet5'") and "resnet50" in err and "\n" not in err
