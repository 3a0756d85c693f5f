"""The doctor's line on failure handling: the collective timeout, the stall watchdog and NCCL's
error handling in force."""

from __future__ import annotations

from pipeline.config import load_config
from pipeline.doctor.environment import check_failure_handling

NCCL_ON = {
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
    "TORCH_NCCL_TRACE_BUFFER_SIZE": "2000",
    "TORCH_NCCL_DEBUG_INFO_TEMP_FILE": "/runs/a/nccl_trace/rank_",
}


def test_the_report_names_the_timeouts_and_nccls_error_handling_in_force():
    cfg = load_config(None, ["train.collective_timeout_s=900", "train.stall_timeout_s=300"])
    gpu = check_failure_handling(cfg, {"nccl_failure_env": NCCL_ON}, [{"device": "cuda:0"}])
    assert gpu.status == "ok"
    assert "collective timeout 900 s, stall watchdog 300 s" in gpu.summary
    assert "async error handling 1" in gpu.summary and "/runs/a/nccl_trace/rank_" in gpu.summary
    unset = check_failure_handling(cfg, {"nccl_failure_env": {}}, [{"device": "cuda:0"}])
    assert unset.status == "warn" and "python -m launch" in unset.summary
    cpu = check_failure_handling(cfg, {}, [{"device": "cpu"}])
    assert cpu.status == "ok" and cpu.values["stall_timeout_s"] == 300
