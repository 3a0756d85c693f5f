"""Train metrics over a logging window, kept on the device, and the rank-0 progress bar."""

from __future__ import annotations

import sys
import time

import torch

from pipeline.distributed import DistInfo, all_reduce_sum


class Window:
    """Train metrics over a logging window, kept on the device until `reduce` (no per-step sync)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.restart()

    def restart(self) -> None:
        self.sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, correct
        self.samples = 0  # host-side counts: creating device tensors per step would sync the GPU
        self.images = 0
        self.data_wait = 0.0
        self.started = self.last = time.perf_counter()

    def data_ready(self) -> None:
        now = time.perf_counter()
        self.data_wait += now - self.last
        self.last = now

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        count = labels.numel()
        self.sums[0] += loss.detach().double() * count
        self.sums[1] += (logits.detach().argmax(dim=1) == labels).sum()
        self.samples += count

    def step_done(self, images: int) -> None:
        self.images += images
        self.last = time.perf_counter()

    def reduce(self, dist: DistInfo) -> dict[str, float]:
        """Global train/loss, train/top1, perf/images_per_s, perf/data_wait_frac (+ perf/gpu_mem_gb on CUDA)."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        extra = torch.tensor(
            [self.samples, self.images, self.data_wait / elapsed],
            dtype=torch.float64,
            device=self.device,
        )
        totals = all_reduce_sum(torch.cat([self.sums, extra]), dist).tolist()
        loss_sum, correct, samples, images, wait_fraction_sum = totals
        metrics = {
            "train/loss": loss_sum / max(samples, 1.0),
            "train/top1": 100.0 * correct / max(samples, 1.0),
            "perf/images_per_s": images / elapsed,
            "perf/data_wait_frac": wait_fraction_sum / dist.world_size,
        }
        if self.device.type == "cuda":
            metrics["perf/gpu_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 1e9
        return metrics


class NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(dist: DistInfo, total: int, initial: int, desc: str):
    """tqdm on rank 0 only (and only on a terminal or when asked), a no-op elsewhere."""
    if not dist.is_main:
        return NoProgress()
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="step",
        dynamic_ncols=True,
        leave=False,
        disable=not sys.stderr.isatty(),
    )
