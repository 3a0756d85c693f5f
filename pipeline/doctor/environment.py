"""Environment: what this node offers the configured run, judged on rank 0 from every rank's
facts (pipeline/doctor/probes.py gathers them).

    checks = summarize_environment(cfg, per_rank_facts, num_parameters=..., per_rank_batch=...,
                                   local_world_size=...)

Checks: torch's CUDA build against the driver, GPUs visible against the ranks on each node,
bf16 and fp16, the NCCL version, DALI (importable, the CUDA it was built for), pillow-simd
(active, built with AVX2, on a CPU with AVX2), free disk for the run dir's checkpoints, free
memory and /dev/shm for the loaders' in-flight batches, and cores per rank against the workers.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import Config
from pipeline.doctor.probes import GB
from pipeline.doctor.report import Check

# The oldest driver each CUDA major version runs on (NVIDIA's CUDA compatibility table).
MIN_DRIVER_FOR_CUDA = {11: "450.80", 12: "525.60", 13: "580.65"}


def checkpoint_bytes(cfg: Config, num_parameters: int) -> int:
    """One checkpoint: fp32 weights plus the optimizer's per-parameter state."""
    slots = {"sgd": 1 if cfg.optim.momentum else 0, "adam": 2, "adamw": 2}[cfg.optim.name]
    return num_parameters * 4 * (1 + slots)


def in_flight_batch_bytes(cfg: Config, per_rank_batch: int) -> int:
    """One rank's loader batches in flight: workers x prefetch_factor uint8 batches."""
    batch = per_rank_batch * 3 * cfg.data.train_crop**2
    return max(1, cfg.data.num_workers) * cfg.data.prefetch_factor * batch


def summarize_environment(
    cfg: Config,
    facts: list[dict[str, Any]],
    *,
    num_parameters: int | None,
    per_rank_batch: int | None,
    local_world_size: int,
    init_error: str = "",
) -> list[Check]:
    """Rank 0's checks from every rank's facts (in rank order; one entry when init failed)."""
    main = facts[0]
    checks = [
        check_torch_and_driver(cfg, main),
        check_devices(cfg, facts, local_world_size, init_error),
        check_precision(cfg, facts),
        check_nccl(cfg, main, facts),
        check_failure_handling(cfg, main, facts),
        check_dali(cfg, main),
        check_pillow(cfg, main),
    ]
    if num_parameters is not None:
        checks.append(check_disk(cfg, main, num_parameters))
    if per_rank_batch is not None:
        checks.append(check_memory(cfg, main, per_rank_batch, local_world_size))
        checks.append(check_cores(cfg, main, local_world_size))
    return checks


def wants_cuda(cfg: Config, main: dict[str, Any]) -> bool:
    """Whether the config trains on CUDA here (auto does wherever a GPU is visible)."""
    if cfg.train.device == "cuda":
        return True
    return cfg.train.device == "auto" and bool(main["cuda_available"] or main["gpus_present"])


def check_torch_and_driver(cfg: Config, main: dict[str, Any]) -> Check:
    build, driver = main["torch_cuda_build"], main["driver_cuda"]
    values = {
        "torch": main["torch"],
        "torch_cuda_build": build,
        "driver_cuda": driver,
        "driver_version": main["driver_version"],
    }
    head = f"torch {main['torch']}" + (f" (CUDA {build} build)" if build else " (CPU-only build)")
    if driver is None:  # a CPU node; where the config wants CUDA, `devices` fails
        return Check(
            "environment",
            "torch + driver",
            "info",
            f"{head}; no NVIDIA driver (libcuda.so.1 not found)",
            values,
        )
    driver_text = f"driver {main['driver_version'] or '?'} (CUDA {driver})"
    if build is None:
        status = "fail" if wants_cuda(cfg, main) else "warn"
        return Check(
            "environment",
            "torch + driver",
            status,
            f"{head} on a node with {driver_text}: install a CUDA build of torch",
            values,
        )
    build_major, build_minor = (int(part) for part in build.split(".")[:2])
    driver_major, driver_minor = (int(part) for part in driver.split(".")[:2])
    if driver_major < build_major:
        needed = MIN_DRIVER_FOR_CUDA.get(build_major, "newer")
        return Check(
            "environment",
            "torch + driver",
            "fail" if wants_cuda(cfg, main) else "warn",
            f"{head} needs a driver for CUDA {build_major}.x ({needed} or newer), this node has "
            f"{driver_text}: upgrade the driver or install torch built for CUDA {driver}",
            values,
        )
    if (driver_major, driver_minor) < (build_major, build_minor):
        return Check(
            "environment",
            "torch + driver",
            "warn",
            f"{head} on {driver_text}: runs by CUDA minor-version compatibility; PTX JIT and "
            "newer features need a newer driver",
            values,
        )
    return Check("environment", "torch + driver", "ok", f"{head}, {driver_text}", values)


def check_devices(
    cfg: Config, facts: list[dict[str, Any]], local_world_size: int, init_error: str
) -> Check:
    """GPUs visible on each node against the ranks there; the device each rank took."""
    main = facts[0]
    values: dict[str, Any] = {
        "train_device": cfg.train.device,
        "devices": [f.get("device") for f in facts],
        "device_count": main["device_count"],
        "gpus_present": main["gpus_present"],
        "ranks_per_node": local_world_size,
    }
    if init_error:
        values["error"] = init_error
        hint = f" (torch: {main['cuda_warning']})" if main["cuda_warning"] else ""
        return Check("environment", "devices", "fail", f"{init_error}{hint}", values)
    if main["gpus_present"] and not main["cuda_available"]:
        # auto and cuda fail in init_distributed; cpu trains on the CPU, as asked
        reason = main["cuda_warning"] or "torch.cuda.is_available() is False"
        return Check(
            "environment",
            "devices",
            "warn",
            f"this node shows GPUs ({main['gpus_present']}) but CUDA cannot start ({reason}): "
            "train.device=cpu trains on the CPU",
            values,
        )
    if "device" not in main:
        return Check("environment", "devices", "skip", "not checked: no device started", values)
    devices = [f["device"] for f in facts]
    if not devices[0].startswith("cuda"):
        return Check(
            "environment",
            "devices",
            "ok",
            f"{len(devices)} rank(s) on cpu ({local_world_size} per node), "
            f"{main['device_count']} GPUs visible (train.device={cfg.train.device})",
            values,
        )
    return check_gpus_per_node(main, devices, local_world_size, values)


def check_gpus_per_node(
    main: dict[str, Any], devices: list[str], local_world_size: int, values: dict[str, Any]
) -> Check:
    """The ranks of each node against its GPUs: one GPU each, none shared, none idle."""
    count = main["device_count"]
    name = main.get("gpu", {}).get("name", "GPU")
    nodes = [
        devices[start : start + local_world_size]
        for start in range(0, len(devices), local_world_size)
    ]
    shared = [node for node in nodes if len(set(node)) < len(node)]
    if shared or local_world_size > count:
        return Check(
            "environment",
            "devices",
            "fail",
            f"{local_world_size} ranks per node but {count} GPUs visible: two ranks would share "
            "a GPU; start one rank per GPU (--nproc-per-node / NPROC_PER_NODE)",
            values,
        )
    idle = count - local_world_size
    text = f"{local_world_size} rank(s) per node on {count} x {name}"
    if idle:
        return Check(
            "environment",
            "devices",
            "warn",
            f"{text}: {idle} GPU(s) idle; start {count} ranks per node to use them",
            values,
        )
    return Check("environment", "devices", "ok", text, values)


def check_precision(cfg: Config, facts: list[dict[str, Any]]) -> Check:
    main = facts[0]
    if "device" not in main:
        return Check("environment", "precision", "skip", "not checked: no device started")
    errors = [f.get("precision_error") for f in facts if f.get("precision_error")]
    gpu = main.get("gpu")
    values = {
        "configured": cfg.train.precision,
        "resolved": main.get("precision"),
        "gpu": gpu,
        "cpu_flags": main["cpu_flags"],
    }
    if errors:
        return Check("environment", "precision", "fail", errors[0], values)
    resolved = main.get("precision") or "?"
    if gpu:
        support = (
            f"sm{gpu['capability'].replace('.', '')}: bf16 "
            f"{'native' if gpu['bf16_native'] else 'emulated (slow)'}, fp16 "
            f"{'tensor cores' if gpu['fp16_tensor_cores'] else 'no tensor cores'}"
        )
        status = "warn" if resolved == "bf16" and not gpu["bf16_native"] else "ok"
        if resolved == "fp32":
            status = "warn"
            support += "; fp32 leaves the tensor cores idle: train.precision=auto"
        return Check(
            "environment",
            "precision",
            status,
            f"{resolved} (train.precision={cfg.train.precision}); {support}",
            values,
        )
    native = {"avx512_bf16", "amx_bf16"} & set(main["cpu_flags"])
    return Check(
        "environment",
        "precision",
        "ok",
        f"{resolved} on cpu (train.precision={cfg.train.precision}); CPU bf16 "
        f"{'native (' + ', '.join(sorted(native)) + ')' if native else 'emulated'}",
        values,
    )


def check_nccl(cfg: Config, main: dict[str, Any], facts: list[dict[str, Any]]) -> Check:
    version = main["nccl"]
    on_gpu = str(facts[0].get("device", "")).startswith("cuda")
    values = {"version": version, "used": on_gpu}
    if version is None:
        status = "fail" if on_gpu else "info"
        return Check("environment", "nccl", status, "torch has no NCCL (gloo only)", values)
    if not on_gpu:
        return Check(
            "environment", "nccl", "info", f"{version} (not used: ranks run gloo on cpu)", values
        )
    return Check("environment", "nccl", "ok", f"{version} (the training backend)", values)


def check_failure_handling(cfg: Config, main: dict[str, Any], facts: list[dict[str, Any]]) -> Check:
    """The collective timeout, the stall watchdog and NCCL's error handling in force."""
    env = main.get("nccl_failure_env") or {}
    on_gpu = str(facts[0].get("device", "")).startswith("cuda")
    train = cfg.train
    watchdog = f"{train.stall_timeout_s:.0f} s" if train.stall_timeout_s else "off"
    summary = f"collective timeout {train.collective_timeout_s:.0f} s, stall watchdog {watchdog}"
    values = {
        "collective_timeout_s": train.collective_timeout_s,
        "stall_timeout_s": train.stall_timeout_s,
        **env,
    }
    if not on_gpu:
        return Check("environment", "failure handling", "ok", summary + " (gloo)", values)
    nccl = (
        f"; NCCL async error handling {env.get('TORCH_NCCL_ASYNC_ERROR_HANDLING') or 'unset'}, "
        f"flight recorder {env.get('TORCH_NCCL_TRACE_BUFFER_SIZE') or 'off'} entries, dump on "
        f"timeout {env.get('TORCH_NCCL_DUMP_ON_TIMEOUT') or 'off'} to "
        f"{env.get('TORCH_NCCL_DEBUG_INFO_TEMP_FILE') or '/tmp'}"
    )
    handled = env.get("TORCH_NCCL_ASYNC_ERROR_HANDLING") not in (None, "0")
    status = "ok" if handled and train.stall_timeout_s else "warn"
    hint = "" if status == "ok" else ": start through `python -m launch` (it sets them)"
    return Check("environment", "failure handling", status, summary + nccl + hint, values)


def check_dali(cfg: Config, main: dict[str, Any]) -> Check:
    dali = main["dali"]
    configured = cfg.data.backend == "dali"
    if not dali["importable"]:
        return Check(
            "environment",
            "dali",
            "fail" if configured else "info",
            f"not importable ({dali['error']})"
            + (
                ": install nvidia-dali-cuda130 or use data.backend=folder or wds"
                if configured
                else ""
            ),
            dali,
        )
    text = f"{dali['version']} ({dali['package'] or 'nvidia-dali'}"
    text += f", built for CUDA {dali['cuda_build']})" if dali["cuda_build"] else ")"
    driver = main["driver_cuda"]
    if (
        dali["cuda_build"]
        and driver
        and int(driver.split(".")[0]) < int(dali["cuda_build"].split(".")[0])
    ):
        return Check(
            "environment",
            "dali",
            "fail" if configured and cfg.data.dali_decode != "cpu" else "warn",
            f"{text} needs a driver for CUDA {dali['cuda_build']}, this one supports CUDA "
            f"{driver}: install the DALI wheel for your CUDA (nvidia-dali-cuda120) or upgrade",
            dali,
        )
    if not main["cuda_available"]:
        text += "; cpu decoding only (mixed needs a GPU)"
    return Check("environment", "dali", "ok", text, dali)


def check_pillow(cfg: Config, main: dict[str, Any]) -> Check:
    pillow = main["pillow"]
    cpu_avx2 = "avx2" in main["cpu_flags"]
    values = {**pillow, "cpu_avx2": cpu_avx2}
    name = f"{'pillow-simd' if pillow['simd'] else 'Pillow'} {pillow['version']}"
    decodes_on_cpu = cfg.data.backend in ("folder", "wds")
    if pillow["avx2_build"] and not cpu_avx2:
        return Check(
            "environment",
            "pillow",
            "fail" if decodes_on_cpu else "warn",
            f"{name} was built with AVX2 but this CPU has none: it dies with SIGILL on the first "
            "resize; rebuild it here (make setup)",
            values,
        )
    if not pillow["simd"]:
        return Check(
            "environment",
            "pillow",
            "warn" if decodes_on_cpu else "info",
            f"{name}, not pillow-simd: CPU decode + resize run about half as fast; `make setup` "
            "builds pillow-simd",
            values,
        )
    built = {True: "an AVX2 build", False: "an SSE build", None: "build unknown"}[
        pillow["avx2_build"]
    ]
    if pillow["avx2_build"] is False and cpu_avx2:
        return Check(
            "environment",
            "pillow",
            "warn" if decodes_on_cpu else "info",
            f'{name}, {built} on a CPU with AVX2: rebuild with CC="cc -mavx2" (make setup does)',
            values,
        )
    return Check(
        "environment",
        "pillow",
        "ok",
        f"{name}, {built}{' on an AVX2 CPU' if cpu_avx2 else ''}",
        values,
    )


def check_disk(cfg: Config, main: dict[str, Any], num_parameters: int) -> Check:
    disk = main["disk"]
    one = checkpoint_bytes(cfg, num_parameters)
    kept = 3 + (cfg.train.epochs // cfg.train.save_every if cfg.train.save_every else 0)
    need_gb = one * kept / GB  # last + best + the one being written + every epoch_NNN.pt
    values = {**disk, "checkpoint_gb": round(one / GB, 3), "need_gb": round(need_gb, 2)}
    text = (
        f"{disk['free_gb']:.1f} GB free for {disk['path']}; {kept} checkpoints of "
        f"{one / GB:.2f} GB need {need_gb:.1f} GB"
    )
    if disk["free_gb"] < need_gb:
        return Check(
            "environment",
            "disk",
            "fail",
            f"{text}: free space or set train.save_every=0 or another train.run_dir",
            values,
        )
    status = "warn" if disk["free_gb"] < 2 * need_gb else "ok"
    return Check("environment", "disk", status, text, values)


def check_memory(
    cfg: Config, main: dict[str, Any], per_rank_batch: int, local_world_size: int
) -> Check:
    memory = main["memory"]
    in_flight = in_flight_batch_bytes(cfg, per_rank_batch) * local_world_size / GB
    values = {**memory, "in_flight_batches_gb": round(in_flight, 3)}
    text = (
        f"{memory['available_gb']} GB available, /dev/shm {memory['shm_free_gb']} GB free; "
        f"{local_world_size} rank(s) keep ~{in_flight:.2f} GB of batches in flight"
    )
    from pipeline.data import jpeg
    from pipeline.data.threads import use_threads

    uses_shm = (  # worker processes hand batches over in /dev/shm; loader threads do not
        cfg.data.backend in ("folder", "wds")
        and cfg.data.num_workers > 0
        and not use_threads(cfg.data, jpeg.AVAILABLE)
    )
    shm = memory["shm_free_gb"]
    if uses_shm and shm is not None and shm < in_flight:
        return Check(
            "environment",
            "memory",
            "fail",
            f"{text}: DataLoader workers would die with a bus error; enlarge /dev/shm (docker "
            "--shm-size) or lower data.num_workers / data.prefetch_factor",
            values,
        )
    available = memory["available_gb"]
    low = (uses_shm and shm is not None and shm < 2 * in_flight) or (
        available is not None and available < 2 * in_flight
    )
    return Check("environment", "memory", "warn" if low else "ok", text, values)


def check_cores(cfg: Config, main: dict[str, Any], local_world_size: int) -> Check:
    cores = main["cpu_count"]
    per_rank = cores / max(local_world_size, 1)
    workers = cfg.data.num_workers
    values = {"cpu_count": cores, "cores_per_rank": round(per_rank, 2), "num_workers": workers}
    text = f"{cores} cores, {per_rank:g} per rank for 1 main process + {workers} workers"
    if cfg.data.backend in ("folder", "wds") and workers + 1 > per_rank * 1.5:
        return Check(
            "environment",
            "cpu cores",
            "warn",
            f"{text}: the workers share cores; data.num_workers={max(1, int(per_rank) - 1)} "
            "decodes as fast with less memory",
            values,
        )
    return Check("environment", "cpu cores", "ok", text, values)
