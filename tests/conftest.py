"""Shared pytest set-up: CPU only, offline W&B, clean skips for gpu/slurm/dali tests, and the
schedule of the parallel run.

Fixtures that build tiny ImageNet layouts live next to the tests that use them
(tests/preprocess, tests/data, tests/train, tests/slurm).

`make test` runs the suite on pytest-xdist workers with `--dist loadgroup`. Each worker is a
process with its own session fixtures, so what is expensive to build is kept to one worker:
- every `slurm` test shares one xdist group, so one worker starts the one test cluster;
- the tests of a module that share a module-scoped fixture (a reference training run, the demo,
  the doctor under torchrun) form one group, so that fixture is built once, not once per worker;
- the tests marked `slow` are handed out first, so no worker is left with a long test at the
  end while the other sits idle.
The tiny data sets are session fixtures built in under a second each: building them once per
worker costs less than a lock shared across workers would save.
"""

from __future__ import annotations

import os
import shutil

import pytest

# No test ever talks to the network; W&B runs the real client in offline mode.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.pop("WANDB_API_KEY", None)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    has_slurm = shutil.which("slurmctld") is not None and shutil.which("munged") is not None
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    skip_slurm = pytest.mark.skip(
        reason="slurm-wlm/munge not installed (make test installs them as root)"
    )
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        if "slurm" in item.keywords and not has_slurm:
            item.add_marker(skip_slurm)
        group = xdist_group_of(item)
        if group is not None and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(group))
    # Slow tests first: a stable sort, so every worker collects the same order (xdist checks).
    items.sort(key=schedule_rank)
    if getattr(config.option, "loadgroup", False):  # set on xdist workers under loadgroup
        for item in items:
            put_group_in_node_id(item)


def put_group_in_node_id(item) -> None:
    """Append `@group` to the item's node id, which `--dist loadgroup` schedules by.

    pytest-xdist 3.8 does this by assigning `item._nodeid`, which pytest 9.2 no longer reads (a
    node id is now the structured `item._id`), so without this every group is silently split
    across the workers, as under `--dist load`. Harmless once xdist sets the id itself: its
    scheduler groups on the text after the last `@`.
    """
    groups = sorted({str(mark.args[0]) for mark in item.iter_markers("xdist_group")})
    if groups:
        item._id = type(item._id).parse(f"{item.nodeid}@{'_'.join(groups)}")


def xdist_group_of(item) -> str | None:
    """The xdist group that keeps `item` on the worker that holds its expensive fixture."""
    if item.get_closest_marker("slurm"):
        return "slurm"  # the session's one test cluster
    fixture_info = getattr(item, "_fixtureinfo", None)
    if fixture_info is None:
        return None
    for name in fixture_info.names_closure:
        definitions = fixture_info.name2fixturedefs.get(name, ())
        if any(definition.scope == "module" for definition in definitions):
            return item.module.__name__  # unique: the suite's test modules have unique names
    return None


def schedule_rank(item) -> int:
    """0 for slow tests, 1 for the rest; each in collection order (xdist sends the groups with
    the most tests first, then single tests in this order)."""
    return 0 if item.get_closest_marker("slow") else 1


def pytest_configure(config):
    """On an xdist worker, give torch's intra-op pool this worker's share of the cores: two
    workers with a pool of every core each would oversubscribe the machine twice over."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
