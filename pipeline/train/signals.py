"""Stop signals: SIGTERM, SIGUSR1 or SIGUSR2 set a flag that every rank agrees on after a step.

    stop = StopFlag(dist)
    ...
    if stop.agreed():   # a collective: every rank calls it once per optimizer step
        save(); return EXIT_STOPPED

The agreement is a two-element MAX all-reduce per step, on a CPU gloo group when training on
nccl, so it never waits for the GPU. Its second element carries rank 0's "a timed save is due"
(train.save_every_minutes, by rank 0's clock alone), so checkpoints by the clock cost no extra
collective: `stop, save = flag.agree_step(save_due)`.
"""

from __future__ import annotations

import signal
import sys

import torch
import torch.distributed as torch_dist

from pipeline.distributed import DistInfo, all_reduce_max, side_group

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class StopFlag:
    """Set by SIGTERM/SIGUSR1/SIGUSR2; `agreed()` is true on every rank once any rank got one."""

    def __init__(self, dist: DistInfo):
        self.received: int | None = None
        self.dist = dist
        # a gloo side group under nccl: the per-step flag all-reduce runs on the CPU and never
        # waits for the GPU (the preflight all-reduces on such a group too)
        self.group = side_group(dist)
        self.previous = {}
        for signum in STOP_SIGNALS:
            self.previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum
            # logging from a handler is not re-entrant safe; write one line directly
            sys.stderr.write(
                f"rank {self.dist.rank}: got {signal.Signals(signum).name}, saving after this "
                "step\n"
            )

    def pending(self) -> bool:
        """This rank got a signal (local, no collective: safe where ranks do different work)."""
        return self.received is not None

    def agreed(self) -> bool:
        return self.agree_step(False)[0]

    def agree_step(self, save_due: bool) -> tuple[bool, bool]:
        """(stop, save) on every rank: stop when any rank got a signal, save when rank 0 says a
        timed save is due (other ranks' `save_due` is ignored: one clock decides). One
        collective."""
        save = bool(save_due) and self.dist.is_main
        flag = torch.tensor([1 if self.received is not None else 0, int(save)], dtype=torch.int32)
        if self.dist.is_distributed:
            if self.group is not None:
                torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX, group=self.group)
            else:
                all_reduce_max(flag, self.dist)
        return bool(flag[0].item()), bool(flag[1].item())

    def signal_name(self) -> str:
        """The signal this rank received, for log lines."""
        if self.received is None:
            return "a signal on another rank"
        return signal.Signals(self.received).name

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
