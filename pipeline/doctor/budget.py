"""How long each of the doctor's measurements runs: `--quick` (CI, a first look) or the default."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Budget:
    collective_warmup: int  # untimed all-reduces first (NCCL sets up its rings on the first)
    collective_iterations: int  # timed all-reduces per group; the median counts
    gloo_iterations: int  # timed all-reduces on the gloo side group (CPU, slower)
    read_seconds: float  # reading the train dir, per rank
    read_bytes: int  # ... or until this many bytes, per rank
    read_files: int  # class folders: at most this many files, per rank
    decode_warmup: int  # untimed batches first (workers starting, DALI building)
    decode_seconds: float  # timed decode + augment per backend, per rank
    model_warmup: int  # untimed optimizer steps first (torch.compile, cudnn autotuning)
    model_seconds: float  # timed optimizer steps on synthetic data, per rank
    model_max_steps: int  # ... or at most this many

    def decode_warmup_for(self, num_workers: int) -> int:
        """Each DataLoader worker's first batch arrives late: skip one round of them."""
        return self.decode_warmup + max(0, num_workers)


QUICK = Budget(
    collective_warmup=1,
    collective_iterations=3,
    gloo_iterations=1,
    read_seconds=1.0,
    read_bytes=64 * 2**20,
    read_files=200,
    decode_warmup=1,
    decode_seconds=1.5,
    model_warmup=1,
    model_seconds=1.5,
    model_max_steps=10,
)
FULL = Budget(
    collective_warmup=3,
    collective_iterations=10,
    gloo_iterations=3,
    read_seconds=8.0,
    read_bytes=2 * 2**30,
    read_files=4000,
    decode_warmup=2,
    decode_seconds=10.0,
    model_warmup=10,
    model_seconds=10.0,
    model_max_steps=200,
)
