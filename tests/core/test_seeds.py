"""The one seed rule: pure, distinct per coordinate, and the same scalar and vectorized."""

import random

import numpy as np
import pytest

from core.seeds import Purpose, stream_seed, stream_seeds, uniforms


def test_a_seed_is_a_pure_function_of_its_coordinates():
    assert stream_seed(3, Purpose.STEP, 1, 2, 3) == stream_seed(3, Purpose.STEP, 1, 2, 3)
    assert 0 <= stream_seed(3, Purpose.STEP, 1, 2, 3) < 2**63


@pytest.mark.parametrize("coordinate", range(6))
def test_changing_any_one_coordinate_changes_the_seed(coordinate):
    base = [11, Purpose.TRAIN_SAMPLE, 4, 1000, 1, 0]
    seeds = set()
    for delta in range(50):
        values = list(base)
        if coordinate == 1:
            values[1] = list(Purpose)[delta % len(Purpose)]
        else:
            values[coordinate] += delta
        seeds.add(stream_seed(*values))
    expected = len(Purpose) if coordinate == 1 else 50
    assert len(seeds) == expected


def test_coordinates_do_not_trade_places():
    """(epoch 1, index 2) and (epoch 2, index 1) are different streams: no formula collisions."""
    assert stream_seed(0, Purpose.STEP, 1, 2) != stream_seed(0, Purpose.STEP, 2, 1)
    assert stream_seed(0, Purpose.STEP, 0, 1, 0) != stream_seed(0, Purpose.STEP, 0, 0, 1)
    assert stream_seed(0, Purpose.STEP, 0, 0, 1, 0) != stream_seed(0, Purpose.STEP, 0, 0, 0, 1)


def test_the_vectorized_rule_gives_the_scalar_rule_element_by_element():
    indices = np.array([0, 1, 2, 7, 1_281_166, 2**40, 2**62])
    vector = stream_seeds(42, Purpose.TRAIN_SAMPLE, 9, indices, rank=3, sub=2)
    scalar = [stream_seed(42, Purpose.TRAIN_SAMPLE, 9, int(i), 3, 2) for i in indices]
    assert vector.tolist() == scalar


def test_uniforms_are_in_the_unit_interval_and_look_uniform():
    draws = uniforms(stream_seeds(0, Purpose.TRAIN_SAMPLE, 0, np.arange(4000)), 4)
    assert draws.shape == (4000, 4)
    assert draws.min() >= 0.0 and draws.max() < 1.0
    assert abs(draws.mean() - 0.5) < 0.01
    # columns are independent draws, not copies of one another
    assert abs(np.corrcoef(draws[:, 0], draws[:, 1])[0, 1]) < 0.05


def test_a_seed_feeds_random_torch_and_numpy():
    import torch

    seed = stream_seed(1, Purpose.STEP, 0, 5)
    random.Random(seed)
    np.random.default_rng(seed)
    torch.Generator().manual_seed(seed)
