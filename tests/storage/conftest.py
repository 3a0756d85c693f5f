"""Real servers for the storage tests, started once per session on 127.0.0.1 (free ports):

  * moto's standalone S3 server (`python -m moto.server`, from `moto[server]`), with IAM
    authentication on: access keys are checked and requests are signed for real, so wrong or
    absent credentials are refused by the server, not by a mock;
  * nginx from Debian (`make test` installs it), serving the shard folder with range support,
    started in the foreground with a generated config in a temp folder;
  * per test, a `FaultProxy` (faultproxy.py) in front of either, which cuts, corrupts, stalls,
    answers 503 and counts requests.

Clients reach S3 through the standard `AWS_ENDPOINT_URL`; the tests' credentials live in the
environment only (and never the developer's: AWS_CONFIG_FILE and friends point at nothing, and
the instance-metadata lookup is off).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from faultproxy import FaultProxy

BUCKET = "imagenet"
PREFIX = "shards/train"
WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361")
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before listening")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s} s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def storage_shards(tmp_path_factory) -> Path:
    """DIR/train: 48 noise JPEGs of 4 classes in 6 shards of 8 (about 40 KB each), written by
    the real shard writer, with their DALI indexes and manifest."""
    from preprocess.cli import main

    root = tmp_path_factory.mktemp("storage-data")
    rng = np.random.default_rng(0)
    for wnid in WNIDS:
        (root / "folders" / wnid).mkdir(parents=True)
        for number in range(12):
            pixels = rng.integers(0, 256, size=(48, 56, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "folders" / wnid / f"{wnid}_{number}.JPEG")
    args = ["shard", str(root / "folders"), str(root / "train"), "--split", "train"]
    assert main([*args, "--shard-size", "8", "--workers", "1"]) == 0
    return root / "train"


@pytest.fixture(autouse=True)
def no_developer_credentials(monkeypatch, tmp_path):
    """Only the credentials a test sets: no ~/.aws files, no instance metadata, no profile."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)


class MotoS3:
    """moto's S3 server with IAM auth on, one user whose keys may do everything in S3."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        # the first 3 actions (creating the user, its key and its policy) run unauthenticated;
        # every later request must carry valid, correctly signed credentials
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"
        self.log = open(folder / "moto.log", "wb")  # noqa: SIM115 - closed by stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        wait_for_port(self.port, self.process, "moto.server")
        self.access_key, self.secret_key = self._create_user()

    def _client(self, service: str, key: str = "bootstrap", secret: str = "bootstrap"):
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
        )

    def _create_user(self) -> tuple[str, str]:
        iam = self._client("iam")
        iam.create_user(UserName="trainer")
        key = iam.create_access_key(UserName="trainer")["AccessKey"]
        policy = json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
            }
        )
        iam.put_user_policy(UserName="trainer", PolicyName="s3", PolicyDocument=policy)
        return key["AccessKeyId"], key["SecretAccessKey"]

    def s3(self):
        return self._client("s3", self.access_key, self.secret_key)

    def upload_dir(self, local: Path, bucket: str, prefix: str) -> str:
        client = self.s3()
        existing = [b["Name"] for b in client.list_buckets().get("Buckets", [])]
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)
        for path in sorted(local.iterdir()):
            client.upload_file(str(path), bucket, f"{prefix}/{path.name}")
        return f"s3://{bucket}/{prefix}"

    def stop(self) -> None:
        stop(self.process)
        self.log.close()


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory, storage_shards) -> MotoS3:
    """The S3 server, with the shards uploaded to s3://imagenet/shards/train."""
    server = MotoS3(tmp_path_factory.mktemp("moto"))
    try:
        server.upload_dir(storage_shards, BUCKET, PREFIX)
    except Exception:
        server.stop()
        raise
    yield server
    server.stop()


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None
    )


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
{user}
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {folder}/access.log;
    client_body_temp_path {folder}/client;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    sendfile on;
    types {{ application/x-tar tar; application/json json; }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


@pytest.fixture(scope="session")
def nginx(tmp_path_factory, storage_shards) -> str:
    """nginx serving the shard folder's parent; returns its base URL (…/train is the split)."""
    binary = nginx_binary()
    if binary is None:
        if os.environ.get("CI") or os.environ.get("REQUIRE_SLURM") == "1":
            pytest.fail("nginx is not installed but CI requires it: run `make storage-deps`")
        pytest.skip("nginx is not installed (make test installs it as root: apt-get install nginx)")
    folder = tmp_path_factory.mktemp("nginx")
    port = free_port()
    user = "user root;" if os.geteuid() == 0 else ""  # workers read the root-only tmp folder
    (folder / "nginx.conf").write_text(
        NGINX_CONF.format(user=user, folder=folder, port=port, root=storage_shards.parent)
    )
    process = subprocess.Popen(
        [binary, "-c", str(folder / "nginx.conf"), "-p", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=(folder / "stderr.log").open("wb"),
    )
    try:
        wait_for_port(port, process, "nginx")
    except RuntimeError:
        stop(process)
        raise RuntimeError((folder / "stderr.log").read_text()) from None
    yield f"http://127.0.0.1:{port}"
    stop(process)


@pytest.fixture
def s3_env(moto_s3, monkeypatch):
    """The trainer's credentials in the environment, and AWS_ENDPOINT_URL at a fresh proxy in
    front of moto; yields the proxy."""
    proxy = FaultProxy("127.0.0.1", moto_s3.port).start()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_s3.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    yield proxy
    proxy.stop()


@pytest.fixture
def http_proxy(nginx):
    """A fresh proxy in front of nginx; its URL of the shard folder is proxy.endpoint + /train."""
    upstream_port = int(nginx.rsplit(":", 1)[1])
    proxy = FaultProxy("127.0.0.1", upstream_port).start()
    yield proxy
    proxy.stop()
