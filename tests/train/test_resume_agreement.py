"""Which checkpoint a multi-rank job resumes from is rank 0's decision (2 real gloo processes)."""

from __future__ import annotations

from pathlib import Path

from train_helpers import run_gloo_ranks

from pipeline.checkpoint import agree_on_checkpoint
from pipeline.errors import CheckpointError


def _agree_in_three_cases(dist, shared: Path) -> list:
    """Each case passes what the trainer does: rank 0's find_latest result, None on other ranks."""
    mine = shared if dist.is_main else None
    outcomes = [agree_on_checkpoint(mine, dist), agree_on_checkpoint(None, dist)]
    if dist.is_main:
        shared.unlink()  # rank 0 names a file no rank can read any more
    try:
        agree_on_checkpoint(mine, dist)
        outcomes.append(None)
    except CheckpointError as err:
        outcomes.append(str(err))
    return outcomes


def test_every_rank_resumes_from_rank_0s_checkpoint_or_all_fail_in_one_line(tmp_path):
    shared = tmp_path / "shared/checkpoints/last.pt"
    shared.parent.mkdir(parents=True)
    shared.write_bytes(b"checkpoint")
    for chosen, nothing, unreadable in run_gloo_ranks(2, _agree_in_three_cases, shared):
        assert (
            chosen == shared
        )  # rank 1 found nothing in its (node-local) run dir, yet resumes from rank 0's choice
        assert nothing is None  # nobody found one: a fresh start everywhere
        assert str(shared) in unreadable and "[0, 1]" in unreadable and "\n" not in unreadable
