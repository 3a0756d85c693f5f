"""The GPU node's missing wheels installed offline: `install_wheels` joins split wheels (made by
`make gpu-wheels`) and runs `pip install --no-index` into the interpreter's site-packages, or
into a --site folder (only what is missing) where those are read-only or externally managed."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tools.gpu_wheels import MANIFEST, NODE_PACKAGES, join_parts

SITE_PROBE = """
import json, os, sys, sysconfig
from pathlib import Path
purelib = sysconfig.get_paths()["purelib"]
managed = sys.prefix == sys.base_prefix and (Path(sysconfig.get_paths()["stdlib"]) /
    "EXTERNALLY-MANAGED").exists()
import importlib.metadata as m
names = sorted({(d.metadata["Name"] or "").lower().replace("_", "-") for d in m.distributions()})
print(json.dumps({"writable": os.access(purelib, os.W_OK) and not managed, "purelib": purelib,
                  "installed": names}))
"""


def wheel_distribution(path: Path) -> str:
    """The normalized distribution name of a wheel file (PEP 427: name-version-...)."""
    return path.name.split("-")[0].lower().replace("_", "-")


def install_wheels(
    wheels: Path, python: str, site: Path, scratch: Path, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Install the folder's requirements into `python`'s environment with --no-index; into
    `site` (--target, only what is missing, no dependency resolution) when its site-packages
    cannot be written. Returns what was done; WheelsError or CalledProcessError on failure."""
    joined_into = wheels if os.access(wheels, os.W_OK) else scratch / "wheels-joined"
    rebuilt = join_parts(wheels, joined_into)
    manifest_path = wheels / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    requirements = manifest.get("requirements") or list(NODE_PACKAGES)
    find_links = ["--find-links", str(wheels)]
    if joined_into != wheels:
        find_links += ["--find-links", str(joined_into)]
    probe = json.loads(
        subprocess.run(
            [python, "-c", SITE_PROBE], capture_output=True, text=True, check=True, env=env
        ).stdout
    )
    command = [python, "-m", "pip", "install", "--no-index", "--no-cache-dir", *find_links]
    if probe["writable"]:
        if manifest.get("no_deps"):
            command.append("--no-deps")
        command += requirements
        target = probe["purelib"]
    else:
        files = {p for p in [*wheels.glob("*.whl"), *joined_into.glob("*.whl")]}
        missing = sorted(
            (p for p in files if wheel_distribution(p) not in probe["installed"]),
            key=lambda p: p.name,
        )
        if not missing:
            return {"target": str(site), "installed": [], "rebuilt": [p.name for p in rebuilt]}
        site.mkdir(parents=True, exist_ok=True)
        command += ["--no-deps", "--upgrade", "--target", str(site), *map(str, missing)]
        target = str(site)
    subprocess.run(command, check=True, env=env, capture_output=True, text=True)
    return {
        "target": target,
        "on_pythonpath": target == str(site),
        "requirements": requirements,
        "rebuilt": [p.name for p in rebuilt],
        "command": command,
    }
