"""`prepare RAW s3://...` against moto's S3 server: killed mid-upload (SIGKILL once the first
shard and its index are in the bucket), then rerun, the bucket is byte-identical to a local
`prepare` of the same RAW and `verify s3://...` passes; a tampered object fails verify, naming
the shard."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faultproxy import Fault

REPO = Path(__file__).resolve().parents[2]


def _load_rawfixtures():
    """tests/preprocess/rawfixtures.py, loaded by path: putting tests/preprocess on sys.path
    would put a second conftest.py on it, first in line."""
    path = REPO / "tests" / "preprocess" / "rawfixtures.py"
    spec = importlib.util.spec_from_file_location("preprocess_rawfixtures", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


build_folder_layout = _load_rawfixtures().build_folder_layout
BUCKET = "prepared"
OPTIONS = ["--shard-size", "2", "--workers", "1", "--short-side", "64"]


def preprocess(*args: str, check: bool = True, **popen) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "preprocess", *args],
        cwd=REPO,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
    )


def expected_objects(local: Path) -> dict[str, bytes]:
    """What a bucket must hold: the shards' folders and the top-level files, no staging state."""
    found = {}
    for path in sorted(local.rglob("*")):
        relative = path.relative_to(local).as_posix()
        hidden = any(part.startswith(".") for part in relative.split("/"))
        if path.is_file() and not hidden and not relative.startswith("folders/"):
            found[relative] = path.read_bytes()
    return found


def bucket_objects(client, prefix: str, bucket: str = BUCKET) -> dict[str, bytes]:
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])
    return {
        item["Key"][len(prefix) + 1 :]: client.get_object(Bucket=bucket, Key=item["Key"])[
            "Body"
        ].read()
        for item in listed
    }


def wait_for_first_shard(client, prefix: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/").get("Contents", [])
        if any(item["Key"].endswith(".idx") for item in listed):  # a tar, then its index
            return
        time.sleep(0.05)
    raise AssertionError(f"no shard object appeared; prepare exited {process.returncode}")


@pytest.fixture
def raw(tmp_path) -> Path:
    build_folder_layout(tmp_path / "raw", per_class=3, val_per_class=2)
    return tmp_path / "raw"


def test_prepare_to_s3_killed_then_rerun_matches_a_local_prepare_and_verifies(
    raw, tmp_path, moto_s3, s3_env
):
    client = moto_s3.s3()
    client.create_bucket(Bucket=BUCKET)
    url, staging = f"s3://{BUCKET}/imagenet", tmp_path / "staging"
    # every upload of the second train shard answers 503: the first run is still retrying it
    # (5 tries, backoff) when it is killed, right after the first shard and its index appear
    s3_env.add(Fault("status", "imagenet-train-000001.tar", method="PUT", times=1000))
    first = subprocess.Popen(
        [sys.executable, "-m", "preprocess", "prepare", str(raw), url, "--staging", str(staging)]
        + OPTIONS,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_first_shard(client, "imagenet", first)
        assert first.poll() is None, "prepare finished before it could be killed"
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.wait(timeout=30)
    assert "imagenet/_info.json" not in [
        item["Key"] for item in client.list_objects_v2(Bucket=BUCKET)["Contents"]
    ]
    assert preprocess("verify", url, check=False).returncode != 0  # no manifest yet

    s3_env.reset()
    rerun = preprocess("prepare", str(raw), url, "--staging", str(staging), *OPTIONS)
    assert "1 already there" in rerun.stdout, rerun.stdout[-3000:]
    assert not staging.exists()  # removed after the verified upload

    preprocess("prepare", str(raw), str(tmp_path / "local"), *OPTIONS)
    expected = expected_objects(tmp_path / "local")
    assert bucket_objects(client, "imagenet") == expected
    verified = preprocess("verify", url)
    assert "train: 6 shards" in verified.stdout and "OK" in verified.stdout, verified.stdout

    client.put_object(Bucket=BUCKET, Key="imagenet/val/imagenet-val-000001.tar", Body=b"x" * 10)
    tampered = preprocess("verify", url, check=False)
    assert tampered.returncode == 1
    assert "imagenet-val-000001.tar" in tampered.stdout, tampered.stdout
    assert "train: 6 shards, sizes and sha256 checked: OK" in tampered.stdout


def sbatch(*args: str, task: int | None = None) -> subprocess.CompletedProcess:
    """slurm/preprocess.sbatch run by bash, as a task of a 2-task array when `task` is given
    (the SLURM_ARRAY_* variables Slurm sets; no Slurm needed)."""
    env = dict(os.environ, PYTHON=sys.executable, PROJECT_DIR=str(REPO))
    if task is not None:
        env |= {
            "SLURM_ARRAY_TASK_ID": str(task),
            "SLURM_ARRAY_TASK_COUNT": "2",
            "SLURM_ARRAY_TASK_MIN": "0",
            "SLURM_ARRAY_TASK_MAX": "1",
            "SLURM_ARRAY_JOB_ID": "7",
        }
    return subprocess.run(
        ["bash", str(REPO / "slurm" / "preprocess.sbatch"), *args],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_slurm_chain_to_a_bucket_uploads_shards_per_task_then_the_manifests_last(
    raw, tmp_path, moto_s3, s3_env
):
    client = moto_s3.s3()
    client.create_bucket(Bucket="chained")
    url, staging = "s3://chained/imagenet", tmp_path / "staging"
    chain = staging / ".slurm-chain" / "test"
    chain.mkdir(parents=True)
    (chain / "tasks").write_text("2\n")
    for stage in ("resize", "shard"):
        for task in (0, 1):
            done = sbatch(
                "chain", stage, str(chain), str(raw), url, "--staging", str(staging), *OPTIONS,
                task=task,
            )  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr
    keys = [item["Key"] for item in client.list_objects_v2(Bucket="chained")["Contents"]]
    assert len([key for key in keys if key.endswith(".tar")]) == 10  # every task uploaded its own
    assert not [key for key in keys if key.endswith(".json")]  # no manifest before the merge

    finish = sbatch("finish", url, str(chain), str(staging))
    assert finish.returncode == 0, finish.stdout + finish.stderr
    assert "0 shards uploaded, 10 already there" in finish.stdout, finish.stdout
    assert not staging.exists()
    preprocess("prepare", str(raw), str(tmp_path / "local"), *OPTIONS)
    assert bucket_objects(client, "imagenet", "chained") == expected_objects(tmp_path / "local")
