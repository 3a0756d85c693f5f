"""Storage client throughput on loopback: our fsspec client against obstore (Rust object_store),
over the same object on nginx (HTTP) and moto's S3 server.

    python -m tools.bench_storage                    # 128 MB object, 3 runs each
    python -m tools.bench_storage --mb 256 --runs 5

It starts both servers itself on 127.0.0.1 (nginx from Debian, `make storage-deps`; moto from
the dev extra), writes one random object, and reads it whole with each client, sha256 included
(what a shard fetch does). Reported, as medians of the runs: MB/s, the time to the first byte,
and the client process's CPU seconds per GB (all its threads; what a loader node pays).
The servers, not the clients, may be the bound: moto is a Python server, so compare clients
within one server only.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1 << 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def start_nginx(folder: Path, root: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    user = "user root;" if os.geteuid() == 0 else ""
    conf = folder / "nginx.conf"
    conf.write_text(
        f"daemon off; worker_processes 2; {user} pid {folder}/nginx.pid; "
        f"error_log {folder}/error.log; events {{ worker_connections 64; }} "
        f"http {{ access_log off; sendfile on; client_body_temp_path {folder}/body; "
        f"server {{ listen 127.0.0.1:{port}; root {root}; }} }}\n"
    )
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    process = subprocess.Popen([binary, "-c", str(conf), "-p", str(folder)])
    wait_for_port(port)
    return process, f"http://127.0.0.1:{port}"


def start_moto(local: Path, name: str) -> tuple[subprocess.Popen, str]:
    import boto3

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="bench")
    client.upload_file(str(local / name), "bench", name)
    return process, endpoint


def read_fsspec(url: str, name: str, size: int) -> tuple[float, float, float]:
    """Our client: RemoteDir's ranged GETs of 16 MiB, hashed as they arrive."""
    from core.remote import RemoteDir

    remote = RemoteDir(url)
    digest = hashlib.sha256()
    begun, cpu = time.perf_counter(), time.process_time()
    first = None
    for block in remote.iter_range(name, 0, size):
        first = first or time.perf_counter() - begun
        digest.update(block)
    return time.perf_counter() - begun, first or 0.0, time.process_time() - cpu


def read_obstore(url: str, name: str, size: int) -> tuple[float, float, float]:
    """obstore: one streaming GET, hashed as it arrives."""
    import obstore
    from obstore.store import from_url

    store = from_url(url, client_options={"allow_http": True})
    digest = hashlib.sha256()
    begun, cpu = time.perf_counter(), time.process_time()
    first = None
    for chunk in obstore.get(store, name).stream(min_chunk_size=8 * MiB):
        first = first or time.perf_counter() - begun
        digest.update(chunk)
    return time.perf_counter() - begun, first or 0.0, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=128, help="object size in MiB")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    size = args.mb * MiB
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        (folder / "data").mkdir()
        name = "object.tar"
        (folder / "data" / name).write_bytes(os.urandom(size))
        nginx, http_url = start_nginx(folder, folder / "data")
        moto, endpoint = start_moto(folder / "data", name)
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        try:
            stores = {"nginx http": http_url, "moto s3": "s3://bench"}
            print(f"{args.mb} MiB object, median of {args.runs} runs, sha256 included")
            print(
                f"{'server':<12}{'client':<10}{'MB/s':>10}{'first byte ms':>16}"
                f"{'client CPU s/GB':>18}"
            )
            for server, url in stores.items():
                for client, read in (("fsspec", read_fsspec), ("obstore", read_obstore)):
                    results = [read(url, name, size) for _ in range(args.runs)]
                    seconds = statistics.median(r[0] for r in results)
                    first = statistics.median(r[1] for r in results)
                    cpu = statistics.median(r[2] for r in results)
                    print(
                        f"{server:<12}{client:<10}{size / 1e6 / seconds:>10.0f}"
                        f"{first * 1000:>16.1f}{cpu / (size / 1e9):>18.2f}",
                        flush=True,
                    )
        finally:
            for process in (nginx, moto):
                process.terminate()
                process.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
