"""The environment's facts: what this node offers, probed on every rank (judged in environment.py).

    cuda = CudaProbe.read()                   # before any CUDA query: torch's warning fires once
    facts = probe_host(cfg, cuda)             # before the process group
    dist = init_distributed(cfg.train.device, probe=cuda)
    facts |= probe_device(cfg, dist)          # after it: the rank's device and its precision

Facts are plain dicts (they are gathered to rank 0): the host, its cores and CPU flags, torch
and its CUDA build, the driver, NCCL, DALI and the CUDA it was built for, which PIL and whether
its core was built with AVX2, free disk under the run dir, available memory and /dev/shm.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import torch

from pipeline.config import Config
from pipeline.distributed import CudaProbe, DistInfo
from pipeline.errors import ConfigError, first_line
from pipeline.precision import has_native_bf16, resolve_precision

GB = 1e9
# pillow-simd is Pillow's fork with the same `PIL` package; its versions end in .postN
PILLOW_SIMD_VERSION = re.compile(r"\.post\d+$")
# A 256-bit VEX instruction (ymm registers): C5, then a byte with the L bit (0x04) set, then an
# integer/move opcode that AVX2 code is full of (vmovdqu/a, vpadd*, vpxor, vpand, vpor, vpsub*).
# A build without -mavx2 (plain `cc` targets SSE2) holds none; an AVX2 build holds thousands.
VEX256 = re.compile(
    b"\\xc5["
    + b"".join(re.escape(bytes([byte])) for byte in range(256) if byte & 0x04)
    + b"][\\x6f\\x7f\\xfe\\xfa\\xef\\xdb\\xeb\\xd4\\xfb]"
)
VEX256_PER_MB_FOR_AVX2 = 100  # measured: an AVX2 pillow-simd ~980 per MB; SSE-only libraries < 10


def probe_host(cfg: Config, cuda: CudaProbe) -> dict[str, Any]:
    """This process's view of the host, before any process group exists; `cuda` is what
    init_distributed will decide from (pipeline/distributed.py reads it once)."""
    return {
        "host": socket.gethostname(),
        "cpu_count": len(os.sched_getaffinity(0)),
        "cpu_flags": sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}),
        "torch": torch.__version__,
        "torch_cuda_build": torch.version.cuda,  # "13.0", or None for a CPU-only build
        "cuda_available": cuda.available,
        "cuda_warning": cuda.torch_warning,
        "device_count": cuda.device_count,
        "gpus_present": cuda.gpus_present,  # "/dev/nvidia0 and 7 more", or "" without GPUs
        "driver_cuda": driver_cuda_version(),
        "driver_version": driver_version(),
        "nccl": nccl_version(),
        "dali": probe_dali(),
        "pillow": probe_pillow(),
        "disk": probe_disk(Path(cfg.train.run_dir)),
        "memory": probe_memory(),
    }


def probe_device(cfg: Config, dist: DistInfo) -> dict[str, Any]:
    """The rank's device (after init_distributed chose it) and the precision `auto` means there."""
    device = dist.torch_device
    facts: dict[str, Any] = {"device": dist.device, "local_rank": dist.local_rank}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        facts["gpu"] = {
            "name": properties.name,
            "capability": f"{properties.major}.{properties.minor}",
            "memory_gb": round(properties.total_memory / GB, 1),
            "bf16_native": has_native_bf16(),  # emulated bf16 on older GPUs is slow
            "fp16_tensor_cores": properties.major >= 7,
        }
    try:
        facts["precision"] = resolve_precision(cfg.train.precision, device)
        facts["precision_error"] = ""
    except ConfigError as err:
        facts["precision"] = None
        facts["precision_error"] = first_line(err)
    return facts


def first_line_of(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def driver_cuda_version() -> str | None:
    """The newest CUDA version the installed driver supports ("13.0"), from libcuda itself;
    None when there is no NVIDIA driver. cuDriverGetVersion needs no cuInit and no GPU."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int()
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return f"{version.value // 1000}.{(version.value % 1000) // 10}"


def driver_version() -> str | None:
    """The kernel driver's version ("580.159.03") from /proc, else nvidia-smi; None without."""
    with contextlib.suppress(OSError):
        match = re.search(
            r"Kernel Module\s+([\d.]+)", Path("/proc/driver/nvidia/version").read_text()
        )
        if match:
            return match.group(1)
    if shutil.which("nvidia-smi"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            result = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
            if result.returncode == 0 and result.stdout.strip():
                return result.stdout.strip().splitlines()[0]
    return None


def nccl_version() -> str | None:
    """The NCCL torch was built with ("2.29.7"), or None when torch has no NCCL."""
    if not torch.distributed.is_available() or not torch.distributed.is_nccl_available():
        return None
    try:
        version = torch.cuda.nccl.version()
    except (RuntimeError, AttributeError):
        return None
    return ".".join(str(part) for part in version) if isinstance(version, tuple) else str(version)


def probe_dali() -> dict[str, Any]:
    """DALI's version, its wheel (nvidia-dali-cuda130) and the CUDA it was built for, or why not."""
    # deferred: DALI is a Linux-only, optional dependency and takes a second to import
    try:
        from nvidia import dali
    except ImportError as err:
        return {"importable": False, "error": first_line_of(str(err)) or type(err).__name__}
    package = next(
        (
            dist.metadata["Name"]
            for dist in importlib.metadata.distributions()
            if (dist.metadata["Name"] or "").lower().startswith("nvidia-dali")
        ),
        "",
    )
    match = re.search(r"cuda(\d+)(\d)$", package)
    return {
        "importable": True,
        "version": dali.__version__,
        "package": package,
        "cuda_build": f"{match.group(1)}.{match.group(2)}" if match else None,
    }


def probe_pillow() -> dict[str, Any]:
    """Which PIL is imported: pillow-simd or Pillow, and whether its core was built with AVX2."""
    import PIL
    import PIL._imaging as imaging

    version = PIL.__version__
    avx2_build = None
    with contextlib.suppress(OSError):
        data = Path(imaging.__file__).read_bytes()
        per_mb = len(VEX256.findall(data)) / max(len(data) / 1e6, 1e-6)
        avx2_build = per_mb >= VEX256_PER_MB_FOR_AVX2
    return {
        "version": version,
        "simd": bool(PILLOW_SIMD_VERSION.search(version)),
        "avx2_build": avx2_build,
    }


def probe_disk(run_dir: Path) -> dict[str, Any]:
    """Free bytes on the file system that holds (or will hold) the run dir."""
    existing = run_dir.expanduser().absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    usage = shutil.disk_usage(existing)
    return {"path": str(run_dir), "probed": str(existing), "free_gb": round(usage.free / GB, 2)}


def probe_memory() -> dict[str, Any]:
    """Available host memory (MemAvailable) and free /dev/shm, where DataLoader workers put
    batches."""
    available = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    shm = None
    with contextlib.suppress(OSError):
        shm = shutil.disk_usage("/dev/shm").free
    return {
        "available_gb": round(available / GB, 2) if available is not None else None,
        "shm_free_gb": round(shm / GB, 2) if shm is not None else None,
    }
