"""The optimizer step (pipeline/train/step.py): one factory builds it for every user (the
trainer, the doctor, --check and tools/bench_train.py), it takes few arguments, and its random
streams follow the one seed rule (core.seeds.stream_seed)."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import torch
from torch import nn

from core.seeds import Purpose, stream_seed
from pipeline.config import load_config
from pipeline.distributed import DistInfo
from pipeline.precision import build_precision
from pipeline.train.step import OptimizerStep, build_model_views, build_optimizer_step

REPO = Path(__file__).resolve().parents[2]
STEP_USERS = (
    "pipeline.train.trainer",
    "pipeline.doctor.model",
    "pipeline.checks",
    "tools.bench_train",
)


def test_the_step_takes_six_arguments_or_fewer():
    parameters = [name for name in inspect.signature(OptimizerStep.__init__).parameters]
    assert parameters[0] == "self" and len(parameters) - 1 <= 6


@pytest.mark.parametrize("module", STEP_USERS)
def test_every_user_of_the_step_builds_it_with_the_one_factory(module):
    source = inspect.getsource(importlib.import_module(module))
    assert "build_optimizer_step(" in source
    for by_hand in ("OptimizerStep(", "GradScaler(", "torch.autocast(", "DistributedDataParallel("):
        assert by_hand not in source, f"{module} assembles {by_hand} by hand"


def test_only_the_factory_constructs_the_step_and_only_precision_makes_a_scaler():
    constructs, scalers = [], []
    for path in [*REPO.glob("pipeline/**/*.py"), *REPO.glob("tools/**/*.py")]:
        text = path.read_text()
        if "OptimizerStep(" in text:
            constructs.append(path.relative_to(REPO).as_posix())
        if "GradScaler(" in text:
            scalers.append(path.relative_to(REPO).as_posix())
    assert constructs == ["pipeline/train/step.py"]
    assert scalers == ["pipeline/precision.py"]


class SeedProbe(nn.Module):
    """Records torch's seed at each forward (what dropout would draw from)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 4 * 4, 2)
        self.seeds: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seeds.append(torch.initial_seed())
        return self.linear(x.flatten(1))


class AugmentProbe:
    """A batch augmentation that records its generator's seed and changes nothing."""

    enabled = True

    def __init__(self) -> None:
        self.seeds: list[int] = []

    def __call__(self, inputs, labels, generator: torch.Generator):
        self.seeds.append(generator.initial_seed())
        return inputs, None


def test_the_steps_and_each_micro_batchs_seeds_follow_the_one_seed_rule():
    cfg = load_config(None, ["train.seed=5", "optim.grad_accum_steps=2"])
    dist = DistInfo(rank=3, world_size=4)  # no process group: the rank's streams only
    model, augment = SeedProbe(), AugmentProbe()
    take_step = build_optimizer_step(
        cfg,
        dist,
        build_model_views(cfg, dist, model, ddp=False),
        build_precision("fp32", torch.device("cpu")),
        augment=augment,
    )
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    batches = iter([(images, torch.tensor([0, 1]))] * 4)
    take_step(batches, 7)
    take_step(batches, 8)
    step_seeds = [stream_seed(5, Purpose.STEP, index=step, rank=3) for step in (7, 8)]
    assert model.seeds == [step_seeds[0], step_seeds[0], step_seeds[1], step_seeds[1]]
    assert augment.seeds == [
        stream_seed(5, Purpose.BATCH_AUGMENT, index=step, rank=3, sub=micro)
        for step in (7, 8)
        for micro in (0, 1)
    ]
    assert len(set(augment.seeds)) == 4 and not set(augment.seeds) & set(step_seeds)
