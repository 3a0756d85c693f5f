"""The trackers behind one interface: metrics.jsonl, W&B (offline), TensorBoard (read back with
TensorBoard's EventAccumulator) and MLflow (a real `mlflow server`, read back with MlflowClient)
hold the same metrics at the same steps; a failing tracker warns once and training goes on; a
2-rank run killed and resumed is one MLflow run and one TensorBoard run, every step once."""

from __future__ import annotations

import json
import logging
import os
import signal
import time

import pytest
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing import event_accumulator
from train_helpers import child_pids, free_port, latest_step, start_torchrun, tiny_args, torchrun

from pipeline.checkpoint import load_checkpoint
from pipeline.config import load_config
from pipeline.distributed import DistInfo
from pipeline.errors import ConfigError
from pipeline.tracking import build_tracker
from pipeline.tracking.base import Backend
from pipeline.tracking.history import read_wandb_history
from pipeline.tracking.jsonl_backend import JsonlBackend
from pipeline.tracking.tracker import Tracker
from pipeline.train.cli import main


def jsonl_values(run_dir) -> dict[tuple[str, int], float]:
    """{(key, step): value} of metrics.jsonl; a (key, step) written twice fails the test."""
    values: dict[tuple[str, int], float] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        for key, value in row.items():
            if key in ("step", "epoch"):
                continue
            assert (key, row["step"]) not in values, f"{key} at step {row['step']} twice"
            values[(key, row["step"])] = value
    return values


def tensorboard_values(run_dir) -> dict[tuple[str, int], float]:
    accumulator = event_accumulator.EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={event_accumulator.SCALARS: 0}
    )
    accumulator.Reload()
    values: dict[tuple[str, int], float] = {}
    for tag in accumulator.Tags()["scalars"]:
        for event in accumulator.Scalars(tag):
            assert (tag, event.step) not in values, f"{tag} at step {event.step} twice"
            values[(tag, event.step)] = event.value
    return values


def mlflow_values(client: MlflowClient, run_id: str) -> dict[tuple[str, int], float]:
    values: dict[tuple[str, int], float] = {}
    for key in client.get_run(run_id).data.metrics:
        for metric in client.get_metric_history(run_id, key):
            assert (key, metric.step) not in values, f"{key} at step {metric.step} twice"
            values[(key, metric.step)] = metric.value
    return values


def assert_same_metrics(expected: dict, got: dict, what: str) -> None:
    """Every (key, step) of metrics.jsonl, and only those (plus `epoch`), with its value
    (TensorBoard stores float32)."""
    assert {pair for pair in got if pair[0] != "epoch"} == set(expected), what
    for pair, value in expected.items():
        assert got[pair] == pytest.approx(value, rel=1e-6, abs=1e-6), (what, pair)


def test_jsonl_wandb_tensorboard_and_mlflow_hold_the_same_metrics_at_the_same_steps(
    tiny_data, mlflow_server, tmp_path
):
    run_dir = tmp_path / "run"
    argv = tiny_args(tiny_data, run_dir, "train.epochs=1", "train.log_every=2", "log.plots=true",
                     "log.wandb=offline", "log.tensorboard=true", f"log.mlflow={mlflow_server.uri}",
                     "log.project=trackers-agree")  # fmt: skip
    assert main(argv) == 0
    expected = jsonl_values(run_dir)
    assert {step for key, step in expected if key == "train/loss"} == {2, 4, 6, 8, 10}
    assert ("val/top1", 10) in expected and ("model/params", 0) in expected

    assert_same_metrics(expected, tensorboard_values(run_dir), "tensorboard")

    client = MlflowClient(mlflow_server.uri)
    run_id = load_checkpoint(run_dir / "checkpoints/last.pt")["mlflow_run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert_same_metrics(expected, mlflow_values(client, run_id), "mlflow")
    assert run.data.params["optim.lr"] == "0.016" and run.data.params["model.arch"] == "alexnet"
    assert run.data.params["log.mlflow"] == mlflow_server.uri
    plots = {item.path for item in client.list_artifacts(run_id, "plots")}
    assert {"plots/loss.png", "plots/accuracy.png", "plots/predictions.png"} <= plots
    assert [item.path for item in client.list_artifacts(run_id, "model")] == [
        "model/model.safetensors"
    ]

    wandb_pairs = {
        (key, row["_step"])
        for row in read_wandb_history(run_dir)
        if "_step" in row
        for key in row
        if "/" in key and not key.startswith(("plots/", "_"))
    }
    assert wandb_pairs == set(expected)


class FailingBackend(Backend):
    """A tracker whose server went away after the first row (our interface, not a mock of one of
    the named trackers: those are exercised for real above)."""

    name = "flaky"

    def __init__(self) -> None:
        self.calls = 0

    def log(self, metrics, step, epoch) -> None:
        self.calls += 1
        if self.calls > 1:
            raise ConnectionError("server at 127.0.0.1 went away")


def test_a_failing_tracker_warns_once_and_the_others_go_on(tmp_path, caplog, monkeypatch):
    flaky = FailingBackend()
    tracker = Tracker(tmp_path, [JsonlBackend(tmp_path, None), flaky])
    with caplog.at_level(logging.WARNING):
        for step in range(1, 5):
            tracker.log({"train/loss": 1.0 / step}, step, step / 4)
        tracker.finish(plots=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("tracker flaky failed to log step 2")
    assert "ConnectionError: server at 127.0.0.1 went away" in warnings[0]
    assert flaky.calls == 2  # dropped after its failure: never called again
    assert sorted(step for _, step in jsonl_values(tmp_path)) == [1, 2, 3, 4]

    # a real MLflow client with no server to reach: one warning, the run keeps metrics.jsonl
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    caplog.clear()
    cfg = load_config(None, [f"log.mlflow=http://127.0.0.1:{free_port()}", "log.wandb=disabled"])
    with caplog.at_level(logging.WARNING):
        tracker = build_tracker(cfg, DistInfo(), tmp_path / "unreachable")
    assert [b.name for b in tracker.backends] == ["jsonl"]
    assert any("tracker mlflow could not start" in r.getMessage() for r in caplog.records)


def test_a_row_a_killed_launch_wrote_only_to_metrics_jsonl_reaches_the_others_with_its_values(
    tmp_path,
):
    """Killed between metrics.jsonl's write of step 23 and TensorBoard's: the rerun, resumed at
    step 20, logs step 23 again with another timing; every tracker then holds jsonl's values."""
    from pipeline.tracking.tensorboard_backend import TensorBoardBackend

    first = Tracker(tmp_path, [JsonlBackend(tmp_path, None), TensorBoardBackend(tmp_path, None)])
    for step in range(1, 23):
        first.log({"train/loss": 1.0 / step, "perf/images_per_s": 100.0}, step, step / 20)
    first.backends[0].log({"train/loss": 1.0 / 23, "perf/images_per_s": 257.0}, 23, 23 / 20)

    rerun = Tracker(tmp_path, [JsonlBackend(tmp_path, 20), TensorBoardBackend(tmp_path, 20)])
    for step in range(21, 25):
        rerun.log({"train/loss": 1.0 / step, "perf/images_per_s": 199.0}, step, step / 20)
    rerun.finish(plots=False)

    expected = jsonl_values(tmp_path)
    assert expected[("perf/images_per_s", 23)] == 257.0  # the killed launch's row stands
    assert expected[("perf/images_per_s", 24)] == 199.0  # the rerun's own row
    assert_same_metrics(expected, tensorboard_values(tmp_path), "tensorboard")


def test_credentials_in_the_mlflow_uri_are_refused_before_they_reach_config_yaml():
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_USERNAME"):
        load_config(None, ["log.mlflow=https://alice:secret@mlflow.example.org"])


RECIPE = ("data.global_batch_size=8", "optim.lr=0.064", "train.epochs=2", "train.log_every=1")


@pytest.mark.slow
def test_a_two_rank_run_killed_and_resumed_is_one_mlflow_run_and_one_tensorboard_run(
    tiny_data, mlflow_server, tmp_path
):
    """SIGKILL mid-epoch 2 (after step 23 was logged; last.pt is at step 20), then a rerun: steps
    21-23 are logged by both launches, yet each tracker holds every step once."""
    run_dir = tmp_path / "run"
    trackers = ("log.tensorboard=true", f"log.mlflow={mlflow_server.uri}")
    argv = tiny_args(tiny_data, run_dir, *RECIPE, *trackers, "log.project=killed-and-resumed")
    launcher = start_torchrun(2, argv, tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 240
        while latest_step(run_dir) < 23 and launcher.poll() is None:
            assert time.monotonic() < deadline, "no step 23 in 240 s"
            time.sleep(0.05)
        for pid in child_pids(launcher.pid):
            signal_kill(pid)
        launcher.kill()
        launcher.wait(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    killed = load_checkpoint(run_dir / "checkpoints/last.pt")
    assert killed["step"] == 20, (tmp_path / "first.log").read_text()[-2000:]

    result = torchrun(2, argv)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    expected = jsonl_values(run_dir)
    assert sorted(s for k, s in expected if k == "train/loss") == list(range(1, 41))
    assert sorted(s for k, s in expected if k == "val/top1") == [20, 40]

    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("killed-and-resumed")
    runs = client.search_runs([experiment.experiment_id])
    final = load_checkpoint(run_dir / "checkpoints/last.pt")
    assert final["mlflow_run_id"] == killed["mlflow_run_id"] != ""
    assert [run.info.run_id for run in runs] == [killed["mlflow_run_id"]]
    assert runs[0].info.status == "FINISHED"
    assert_same_metrics(expected, mlflow_values(client, runs[0].info.run_id), "mlflow")

    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one run dir
    assert_same_metrics(expected, tensorboard_values(run_dir), "tensorboard")


def signal_kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
