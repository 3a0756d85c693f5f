"""The stall watchdog: a rank that stops making progress is named within minutes, not waited on.

    progress = Progress()                         # the training thread marks phases on it
    watchdog = Watchdog(dist, progress, run_dir, cfg.train.stall_timeout_s)
    watchdog.start()                              # a daemon thread per rank
    progress.mark(Phase.DATA_WAIT, step)          # cheap: three attribute stores

Every `period_s` each rank's thread publishes (sequence number, step, phase, seconds since its
last progress, host, pid) to the c10d store. Under torchrun that store is hosted by the agent,
so it outlives a stopped rank 0. The monitors (local ranks 0 and 1 of every node: one per node
survives a stalled rank) read everyone's records and judge with their OWN monotonic clock,
never comparing clocks across hosts:
  * a rank whose sequence number has not advanced for stall_timeout_s is stopped (SIGSTOP, a
    hang that holds the GIL, a dead node);
  * a rank whose progress is older than stall_timeout_s while it is NOT waiting in a collective
    (data wait, forward, eval, checkpoint) is stalled;
  * ranks waiting in a collective behind them are victims, named only when nobody else is.
The first monitor to judge writes one verdict (compare-and-set). Every rank that can still act
sees it, dumps all its threads' Python stacks to RUN_DIR/stacks/rank-N.txt (faulthandler), and
exits 75 (EXIT_STOPPED: train.sbatch requeues, torchrun restarts with --max-restarts); the
lowest rank not named prints the one line. `os._exit`, because the main thread is stuck.
"""

from __future__ import annotations

import enum
import faulthandler
import json
import logging
import multiprocessing
import os
import socket
import sys
import threading
import time
from pathlib import Path

from pipeline.distributed import DistInfo, coordination_store
from pipeline.errors import EXIT_STOPPED

logger = logging.getLogger(__name__)

VERDICT_KEY = "watchdog/verdict"


class Phase(str, enum.Enum):
    START = "start"  # start-up, or an epoch's loader starting: allowed 3 x the timeout
    DATA_WAIT = "data_wait"
    FORWARD_BACKWARD = "forward_backward"
    ALL_REDUCE = "all_reduce"  # waiting for the other ranks: a victim, not a culprit
    EVAL = "eval"
    CHECKPOINT = "checkpoint"


class Progress:
    """This rank's latest progress, written by the training thread, read by the watchdog's."""

    def __init__(self) -> None:
        self.step = 0
        self.phase = Phase.START
        self.since = time.monotonic()  # when the phase began: progress is a change of phase

    def mark(self, phase: Phase, step: int | None = None) -> None:
        if step is not None:
            self.step = step
        self.phase = phase
        self.since = time.monotonic()


def rank_key(rank: int) -> str:
    return f"watchdog/rank/{rank}"


def judge(records: dict[int, dict], frozen_s: dict[int, float], timeout_s: float) -> list[int]:
    """The ranks to name: stopped or stalled outside a collective; when there are none but a
    rank has waited in a collective for twice the timeout, the ranks not waiting (or all)."""
    named = []
    waiting = []
    for rank, record in sorted(records.items()):
        limit = timeout_s * (3 if record["phase"] == Phase.START else 1)
        stale = record["age"] > limit
        if frozen_s.get(rank, 0.0) > timeout_s or (stale and record["phase"] != Phase.ALL_REDUCE):
            named.append(rank)
        elif stale:
            waiting.append(rank)
    if named:
        return named
    if any(records[rank]["age"] > 2 * timeout_s for rank in waiting):
        others = [rank for rank in records if rank not in waiting]
        return others or waiting
    return []


def verdict_line(named: list[int], records: dict[int, dict], run_dir: Path) -> str:
    """The one line: which ranks, where, doing what, at which step, and where the stacks are."""
    parts = [
        f"rank {r} on {records[r]['host']} ({records[r]['phase']}, step {records[r]['step']}, "
        f"no progress for {records[r]['age']:.0f} s)"
        for r in named
    ]
    return (
        f"watchdog: stalled: {'; '.join(parts)}; stacks of every rank that could still act in "
        f"{run_dir / 'stacks'}/rank-N.txt; exiting {EXIT_STOPPED} so the job requeues"
    )


class Watchdog:
    """A daemon thread per rank that publishes this rank's progress and acts on a stall."""

    def __init__(
        self,
        dist: DistInfo,
        progress: Progress,
        run_dir: Path,
        timeout_s: float,
        period_s: float | None = None,
    ) -> None:
        self.dist = dist
        self.progress = progress
        self.run_dir = Path(run_dir)
        self.timeout_s = timeout_s
        self.period_s = period_s or min(2.0, max(0.5, timeout_s / 10))
        self.store = coordination_store(dist) if timeout_s > 0 else None
        self.monitor = dist.local_rank < 2
        self.host = socket.gethostname()
        self.sequence = 0
        self.seen: dict[int, tuple[int, float]] = {}  # rank -> (sequence, my clock when it moved)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="stall-watchdog", daemon=True)

    def start(self) -> None:
        if self.store is not None:
            self.progress.mark(Phase.START)
            self.publish()
            self.thread.start()

    def stop(self) -> None:
        self.stopping.set()

    def publish(self) -> None:
        progress = self.progress
        self.sequence += 1
        record = {
            "seq": self.sequence,
            "step": progress.step,
            "phase": progress.phase.value,
            "age": time.monotonic() - progress.since,
            "host": self.host,
            "pid": os.getpid(),
        }
        self.store.set(rank_key(self.dist.rank), json.dumps(record))

    def run(self) -> None:
        while not self.stopping.wait(self.period_s):
            try:
                self.publish()
                if self.store.check([VERDICT_KEY]):
                    self.act(json.loads(self.store.get(VERDICT_KEY)))
                if self.monitor:
                    self.watch()
            except Exception as err:  # noqa: BLE001 (the store is gone: the run is ending anyway)
                logger.debug("watchdog: %s", err)
                if self.stopping.is_set():
                    return

    def watch(self) -> None:
        """Read every rank's record, judge by this rank's clock, and post a verdict."""
        keys = [rank_key(rank) for rank in range(self.dist.world_size)]
        if not self.store.check(keys):
            return  # a rank has not started yet
        now = time.monotonic()
        records, frozen = {}, {}
        for rank, raw in enumerate(self.store.multi_get(keys)):
            record = records[rank] = json.loads(raw)
            sequence, moved = self.seen.get(rank, (-1, now))
            if record["seq"] != sequence:
                moved = now
            self.seen[rank] = (record["seq"], moved)
            frozen[rank] = now - moved
            record["age"] += frozen[rank]  # a stopped rank's progress keeps ageing
        named = judge(records, frozen, self.timeout_s)
        if not named:
            return
        reporter = min((r for r in records if r not in named), default=named[0])
        verdict = {"line": verdict_line(named, records, self.run_dir), "reporter": reporter}
        self.store.compare_set(VERDICT_KEY, "", json.dumps(verdict))
        self.act(json.loads(self.store.get(VERDICT_KEY)))

    def act(self, verdict: dict) -> None:
        """Dump this rank's stacks, print the line (the reporter only), and exit 75 now."""
        stacks = self.run_dir / "stacks"
        stacks.mkdir(parents=True, exist_ok=True)
        with open(stacks / f"rank-{self.dist.rank}.txt", "w") as handle:
            handle.write(f"rank {self.dist.rank} on {self.host}, pid {os.getpid()}\n")
            handle.flush()
            faulthandler.dump_traceback(handle, all_threads=True)
        if verdict["reporter"] == self.dist.rank:
            sys.stderr.write(verdict["line"] + "\n")
        # every live rank sees the verdict within a period: wait that long before exiting, so
        # torchrun does not kill a rank that is still to dump its stacks
        time.sleep(2 * self.period_s)
        for child in multiprocessing.active_children():  # loader workers, even one asleep
            child.kill()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        logging.shutdown()
        os._exit(EXIT_STOPPED)
