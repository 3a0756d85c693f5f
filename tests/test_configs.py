"""Every shipped config loads and builds its model: a recipe that does not is a typo or a key
the code no longer has, found here instead of an hour into a cluster job."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.config import load_config
from pipeline.models import build_model, check_input_sizes, input_rule

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_the_recipes_the_readme_promises_are_shipped():
    names = {path.stem for path in CONFIGS}
    assert {"resnet50", "resnet18", "vgg16_bn", "inception_v3", "mobilenet_v3_large"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_every_shipped_config_loads_and_builds_its_model(path):
    cfg = load_config(path)
    check_input_sizes(cfg)
    model = build_model(cfg.model, num_classes=1000, image_size=cfg.data.train_crop)
    size = (
        max(input_rule(cfg.model.arch).minimum, 32)
        if not input_rule(cfg.model.arch).fixed
        else cfg.data.train_crop
    )
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, size, size)).shape == (1, 1000)
