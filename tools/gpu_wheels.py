"""Download, on a machine with network, the wheels a GPU node without network lacks for
`make gpu-check`: NVIDIA DALI, webdataset and wandb with everything they need, for manylinux
x86-64 and the node's Python, optionally split into parts below a size limit.

    make gpu-wheels PYTHON_VERSION=3.12                      # -> gpu-wheels/, split above 60 MB
    python -m tools.gpu_wheels --dest gpu-wheels --python-version 3.12 --split-mb 60
    python -m tools.gpu_wheels --dest W --python-version 3.11 --packages webdataset braceexpand \
        --no-deps                                            # a small folder (what a test does)

Then copy the folder to the node next to the checkout and run `make gpu-check GPU_WHEELS=DIR`;
tools/gpu_install.py (run by gpu_check) joins split wheels again and installs them with
`pip install --no-index`.

What is downloaded: the requirements pyproject.toml gives for DALI, webdataset and wandb (or
--packages), resolved by `pip download --only-binary=:all:` for CPython --python-version on
every manylinux tag up to --manylinux (pip matches each platform tag exactly, so all are listed),
with their dependencies unless --no-deps. Dependencies the node already has (numpy, PyYAML,
requests, ...) are downloaded too; pip on the node skips what is installed. The folder gets a
gpu-wheels.json naming the requirements, the Python version, the tags and every file.

A wheel above --split-mb (DALI's is several hundred MB) becomes NAME.whl.part000, part001, ...
plus NAME.whl.parts.json with its size and sha256, so it fits size-limited transfers; the
original is removed. `join_parts` (used by gpu_install) rebuilds and verifies it.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NODE_PACKAGES = ("nvidia-dali-cuda130", "webdataset", "wandb")  # what a torch node lacks
MANIFEST = "gpu-wheels.json"
PARTS_SUFFIX = ".parts.json"
MB = 2**20


class WheelsError(Exception):
    """A problem with a wheel folder or its download; the message is one line."""


def requirements_from_pyproject(names: tuple[str, ...] = NODE_PACKAGES) -> list[str]:
    """pyproject.toml's requirement for each of `names` (version bounds kept, markers dropped:
    the node is Linux, and pip evaluates markers on this machine, not the target)."""
    import tomllib

    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    found = {}
    for requirement in dependencies:
        spec = requirement.split(";")[0].strip()
        name = re.split(r"[<>=!~\[ ]", spec, maxsplit=1)[0].lower()
        found[name] = spec
    missing = [name for name in names if name not in found]
    if missing:
        raise WheelsError(f"pyproject.toml lists no {', '.join(missing)}: pass --packages")
    return [found[name] for name in names]


def platform_tags(manylinux: str) -> list[str]:
    """Every manylinux x86-64 tag a glibc of `manylinux` ("2.28") or newer accepts."""
    major, minor = (int(part) for part in manylinux.split("."))
    if major != 2 or not 5 <= minor <= 40:
        raise WheelsError(f"--manylinux {manylinux}: give a glibc version from 2.5 to 2.40")
    tags = [f"manylinux_2_{n}_x86_64" for n in range(minor, 4, -1)]
    legacy = {17: "manylinux2014_x86_64", 12: "manylinux2010_x86_64", 5: "manylinux1_x86_64"}
    return tags + [tag for glibc, tag in legacy.items() if glibc <= minor]


def pip_command() -> list[str]:
    """This interpreter's pip, else a pip on PATH (a uv-made venv has none; any pip can download
    for any --python-version)."""
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    for name in ("pip3", "pip"):
        if found := shutil.which(name):
            return [found]
    raise WheelsError(f"{sys.executable} has no pip and none is on PATH: install pip")


def download_command(
    requirements: list[str], dest: Path, python_version: str, manylinux: str, no_deps: bool
) -> list[str]:
    command = [
        *pip_command(),
        "download",
        "--only-binary=:all:",
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        "--dest",
        str(dest),
    ]
    for tag in platform_tags(manylinux):
        command += ["--platform", tag]
    if no_deps:
        command.append("--no-deps")
    return command + requirements


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(8 * MB):
            digest.update(chunk)
    return digest.hexdigest()


def split_wheel(path: Path, limit_mb: float) -> list[Path]:
    """NAME.whl → NAME.whl.partNNN (each at most `limit_mb` MiB) + NAME.whl.parts.json; the
    wheel itself is removed once its parts are written."""
    limit = max(1, int(limit_mb * MB))
    record = {"wheel": path.name, "bytes": path.stat().st_size, "sha256": sha256_of(path)}
    parts = []
    with open(path, "rb") as handle:
        while chunk := handle.read(limit):
            part = path.with_name(f"{path.name}.part{len(parts):03d}")
            part.write_bytes(chunk)
            parts.append(part)
    record["parts"] = [part.name for part in parts]
    path.with_name(path.name + PARTS_SUFFIX).write_text(json.dumps(record, indent=1) + "\n")
    path.unlink()
    return parts


def join_parts(folder: Path, into: Path) -> list[Path]:
    """Rebuild every split wheel of `folder` in `into` (which may be `folder`), checking its
    size and sha256; returns the rebuilt wheels. WheelsError names a missing or bad part."""
    rebuilt = []
    into.mkdir(parents=True, exist_ok=True)
    for record_path in sorted(folder.glob(f"*.whl{PARTS_SUFFIX}")):
        record = json.loads(record_path.read_text())
        wheel = into / record["wheel"]
        same_size = wheel.is_file() and wheel.stat().st_size == record["bytes"]
        if same_size and sha256_of(wheel) == record["sha256"]:  # joined by an earlier run
            rebuilt.append(wheel)
            continue
        temporary = wheel.with_name(wheel.name + ".joining")
        with open(temporary, "wb") as out:
            for name in record["parts"]:
                part = folder / name
                if not part.is_file():
                    temporary.unlink()
                    raise WheelsError(
                        f"{folder}: part {name} of {record['wheel']} is missing: copy every "
                        f"{record['wheel']}.partNNN file"
                    )
                out.write(part.read_bytes())
        if temporary.stat().st_size != record["bytes"] or sha256_of(temporary) != record["sha256"]:
            temporary.unlink()
            raise WheelsError(
                f"{folder}: the parts of {record['wheel']} do not join into the wheel that was "
                "split (size or sha256 differ): copy them again"
            )
        temporary.replace(wheel)
        rebuilt.append(wheel)
    return rebuilt


def download(
    dest: Path,
    python_version: str,
    *,
    packages: list[str] | None = None,
    no_deps: bool = False,
    split_mb: float = 60.0,
    manylinux: str = "2.28",
) -> dict:
    """Download into `dest`, split large wheels, write gpu-wheels.json; returns that record."""
    if not re.fullmatch(r"3\.\d+", python_version):
        raise WheelsError(f"--python-version {python_version!r}: give major.minor, e.g. 3.12")
    requirements = packages or requirements_from_pyproject()
    dest.mkdir(parents=True, exist_ok=True)
    command = download_command(requirements, dest, python_version, manylinux, no_deps)
    print(f"gpu-wheels: {' '.join(command)}", flush=True)
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise WheelsError(
            f"pip download exited {result.returncode} (see its output above): check the network "
            "or the package index, and --python-version / --manylinux"
        )
    split = []
    if split_mb > 0:
        for wheel in sorted(dest.glob("*.whl")):
            if wheel.stat().st_size > split_mb * MB:
                parts = split_wheel(wheel, split_mb)
                split.append({"wheel": wheel.name, "parts": len(parts)})
                print(f"gpu-wheels: split {wheel.name} into {len(parts)} parts", flush=True)
    files = sorted(path.name for path in dest.iterdir() if path.name != MANIFEST)
    record = {
        "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python_version": python_version,
        "manylinux": manylinux,
        "platforms": platform_tags(manylinux),
        "requirements": requirements,
        "no_deps": no_deps,
        "split_mb": split_mb,
        "split": split,
        "files": files,
    }
    (dest / MANIFEST).write_text(json.dumps(record, indent=1) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.gpu_wheels", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--dest", type=Path, default=Path("gpu-wheels"), help="wheel folder")
    parser.add_argument(
        "--python-version", required=True, help="the GPU node's Python, major.minor (3.12)"
    )
    parser.add_argument(
        "--packages",
        nargs="+",
        help=f"requirements to download (default: pyproject's {', '.join(NODE_PACKAGES)})",
    )
    parser.add_argument("--no-deps", action="store_true", help="only the named packages")
    parser.add_argument(
        "--split-mb",
        type=float,
        default=60.0,
        help="split wheels above this many MiB into parts (0: never; default 60)",
    )
    parser.add_argument(
        "--manylinux",
        default="2.28",
        help="the node's glibc: accept manylinux wheels up to this version (default 2.28)",
    )
    args = parser.parse_args(argv)
    try:
        record = download(
            args.dest,
            args.python_version,
            packages=args.packages,
            no_deps=args.no_deps,
            split_mb=args.split_mb,
            manylinux=args.manylinux,
        )
    except WheelsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"gpu-wheels: {len(record['files'])} files in {args.dest} for Python "
        f"{args.python_version}: copy the folder to the GPU node and run "
        f"`make gpu-check GPU_WHEELS={args.dest}`"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
