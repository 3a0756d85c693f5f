"""One optimizer step's randomness: the torch seed every step starts from.

Dropout masks (and anything else drawn from torch's generator inside a step) depend on
(seed, rank, step) only, so a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations


def step_seed(seed: int, rank: int, step: int) -> int:
    """The torch seed for one optimizer step of one rank: dropout depends on (seed, rank, step) only."""
    return (seed * 1_000_003 + rank * 7_919 + step * 2_654_435_761) % (2**63 - 1)
