"""The one seed rule: every random stream's seed is a pure function of
(seed, purpose, epoch, index, rank).

    from core.seeds import Purpose, stream_seed
    rng = random.Random(stream_seed(cfg.train.seed, Purpose.TRAIN_SAMPLE, epoch, sample))

`index` is the step or the sample (whatever the stream is drawn per), `rank` the global rank, and
`sub` a further coordinate inside one index where a purpose needs it (a worker, a micro-batch).
A new random stream adds a `Purpose`, never a formula. So a resume, under any worker count or
world size, re-derives every draw from the coordinates alone, and two purposes never share a
stream.

The mixing is splitmix64 (Steele, Lea & Flood, "Fast splittable pseudorandom number generators",
OOPSLA 2014) folded over the coordinates; `stream_seeds` is the same rule over a numpy array of
indices (DALI draws a whole batch's crops at once), and gives the same numbers element by element.
Results are 63-bit, so they fit `torch.manual_seed`, `random.Random` and numpy alike.
"""

from __future__ import annotations

import enum

import numpy as np

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MUL1 = 0xBF58476D1CE4E5B9
_MUL2 = 0x94D049BB133111EB


class Purpose(enum.IntEnum):
    """What a random stream is for; the value is part of the seed, so never renumber one."""

    TRAIN_SAMPLE = 1  # one train sample's crop, flip and auto-augment draws (every backend)
    SAMPLE_ORDER = 2  # the epoch's permutation of samples over files (IndexPlan)
    SHARD_ORDER = 3  # the epoch's permutation of shards (ShardReadPlan)
    SHARD_START = 4  # where the epoch's rotated sample sequence starts (ShardReadPlan)
    SHUFFLE_BUFFER = 5  # webdataset's shuffle buffer of one rank's worker (sub: the worker)
    STEP = 6  # torch's generator for one optimizer step (dropout), per rank
    BATCH_AUGMENT = 7  # mixup / cutmix / erasing of one micro-batch (index: step, sub: micro)
    DALI_PIPELINE = 8  # a DALI pipeline's own seed (index: the first batch it reads)
    DALI_FILE_ORDER = 9  # DALI's per-epoch file list order of one rank (sub: the list's number)
    COMM_INIT = 10  # PowerSGD's initial Q of one parameter (index: the parameter)
    AUTO_AUGMENT = 11  # torch's generator around one sample's auto-augment ops


def _mix(value: int) -> int:
    value = (value + _GOLDEN) & _MASK64
    value = ((value ^ (value >> 30)) * _MUL1) & _MASK64
    value = ((value ^ (value >> 27)) * _MUL2) & _MASK64
    return value ^ (value >> 31)


def stream_seed(
    seed: int, purpose: Purpose, epoch: int = 0, index: int = 0, rank: int = 0, sub: int = 0
) -> int:
    """The 63-bit seed of one random stream: a function of these six numbers only."""
    state = _mix(seed & _MASK64)
    for part in (int(purpose), epoch, index, rank, sub):
        state = _mix(state ^ (part & _MASK64))
    return state >> 1


def _mix_array(values: np.ndarray) -> np.ndarray:
    values = values + np.uint64(_GOLDEN)  # uint64 arithmetic wraps, as & _MASK64 does above
    values = (values ^ (values >> np.uint64(30))) * np.uint64(_MUL1)
    values = (values ^ (values >> np.uint64(27))) * np.uint64(_MUL2)
    return values ^ (values >> np.uint64(31))


def stream_seeds(
    seed: int, purpose: Purpose, epoch: int, indices: np.ndarray, rank: int = 0, sub: int = 0
) -> np.ndarray:
    """`stream_seed` for every index of `indices` at once: uint64 [N], element i equal to
    `stream_seed(seed, purpose, epoch, indices[i], rank, sub)`."""
    with np.errstate(over="ignore"):
        state = _mix(seed & _MASK64)
        for part in (int(purpose), epoch):
            state = _mix(state ^ (part & _MASK64))
        mixed = np.asarray(indices).astype(np.int64).view(np.uint64) ^ np.uint64(state)
        mixed = _mix_array(mixed)
        mixed = _mix_array(mixed ^ np.uint64(rank & _MASK64))
        mixed = _mix_array(mixed ^ np.uint64(sub & _MASK64))
        return mixed >> np.uint64(1)


def uniforms(seeds: np.ndarray, count: int) -> np.ndarray:
    """float64 [N, count] in [0, 1): `count` independent draws from each of N stream seeds."""
    with np.errstate(over="ignore"):
        counters = np.arange(1, count + 1, dtype=np.uint64)
        bits = _mix_array(np.asarray(seeds, dtype=np.uint64)[:, None] ^ counters[None, :])
        return (bits >> np.uint64(11)).astype(np.float64) / float(1 << 53)
