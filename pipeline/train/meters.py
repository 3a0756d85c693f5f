"""Train metrics over a logging window, kept on the device until logged, and the progress bar.

    meter = TrainMeter(dist, tracker, log_every=50)
    for images, labels in meter.log_every(loader):  # times the wait for every batch
        ...
        meter.add(loss, logits, labels)             # per micro-batch, no host sync
    meter.end_step(step, epoch, {"opt/lr": lr})     # every `log_every` steps: one all-reduce, a row

The window's sums stay on the device (a host read per step would sync the GPU); `end_step`
all-reduces them over ranks every `log_every` optimizer steps and logs the global means.
Data wait is the time spent blocked in the loader's `next()`, and only that: the forward and
backward of a micro-batch never count as waiting, with or without gradient accumulation.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator

import torch
from tqdm import tqdm

from pipeline.distributed import DistInfo, all_reduce_sum
from pipeline.tracking import NullTracker
from pipeline.train.watchdog import Progress


class TrainMeter:
    """Loss, accuracy, throughput and data wait of the current logging window."""

    def __init__(
        self,
        dist: DistInfo,
        tracker: NullTracker,
        log_every: int,
        accuracy_key: str = "train/top1",  # train/top1_dominant when labels are mixed
        progress: Progress | None = None,  # the rank's phase marks (the trainer's stall watchdog)
    ) -> None:
        self.dist = dist
        self.progress = progress if progress is not None else Progress()
        self.accuracy_key = accuracy_key
        self.device = dist.torch_device
        self.tracker = tracker
        self.every = log_every
        self.restart()

    def restart(self) -> None:
        """Open a new window (at each logging step and at the start of each epoch)."""
        self.sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, correct
        self.samples = 0  # host-side counts: creating device tensors per step would sync the GPU
        self.data_wait = 0.0  # seconds blocked in the loader
        self.started = time.perf_counter()

    def log_every(self, batches: Iterable) -> Iterator:
        """The loader's batches, unchanged; the time each one took to arrive is data wait."""
        iterator = iter(batches)
        while True:
            waiting = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.data_wait += time.perf_counter() - waiting
            yield batch

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """One micro-batch's mean loss, logits [B, C] and labels [B], all on the device."""
        count = labels.numel()
        self.sums[0] += loss.detach().double() * count
        self.sums[1] += (logits.detach().argmax(dim=1) == labels).sum()
        self.samples += count

    def end_step(self, step: int, epoch: float, extra: dict[str, float]) -> dict[str, float] | None:
        """After optimizer step `step` (1-based): every `log_every` steps, log the window's global
        metrics plus `extra` (opt/lr, ...) and open a new window; returns what was logged."""
        if step % self.every:
            return None
        metrics = {**self.reduce(), **extra}
        self.tracker.log(metrics, step, epoch)
        self.restart()
        return metrics

    def reduce(self) -> dict[str, float]:
        """Global train/loss, train/top1, perf/images_per_s, perf/data_wait_frac (+ perf/gpu_mem_gb
        on CUDA). A collective: every rank calls it at the same step."""
        if self.device.type == "cuda":
            # kernels run asynchronously: without this the window would end when the last step
            # was queued, not when it ran, and images/s would read high
            torch.cuda.synchronize(self.device)
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        extra = torch.tensor(
            [self.samples, self.data_wait / elapsed], dtype=torch.float64, device=self.device
        )
        totals = all_reduce_sum(torch.cat([self.sums, extra]), self.dist).tolist()
        loss_sum, correct, samples, wait_fraction_sum = totals
        metrics = {
            "train/loss": loss_sum / max(samples, 1.0),
            self.accuracy_key: 100.0 * correct / max(samples, 1.0),
            "perf/images_per_s": samples / elapsed,
            "perf/data_wait_frac": wait_fraction_sum / self.dist.world_size,
        }
        if self.device.type == "cuda":
            metrics["perf/gpu_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 1e9
        return metrics


class NoProgress:
    """What ranks other than 0 get instead of a tqdm bar."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(dist: DistInfo, total: int, initial: int, desc: str):
    """tqdm on rank 0 only (and only on a terminal), a no-op elsewhere."""
    if not dist.is_main:
        return NoProgress()
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="step",
        dynamic_ncols=True,
        leave=False,
        disable=not sys.stderr.isatty(),
    )
