"""log.tensorboard=true: TensorBoard event files in RUN_DIR/tensorboard/ (torch's SummaryWriter).

    tensorboard --logdir RUN_DIR/tensorboard

Every launch of a run writes a new event file into the same folder, which TensorBoard shows as
one run. On resume, the (tag, step) pairs the folder already holds at or after the resume step
are read back with TensorBoard's own reader and not written again (pipeline/tracking/base.py:
the first value stands), so each step appears once. Each log call is flushed, so a killed job
loses at most the row being written (the writer would otherwise queue up to 2 minutes of rows).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.tracking.base import Backend, LoggedSteps, RunStatus

TENSORBOARD_DIR = "tensorboard"


class TensorBoardBackend(Backend):
    name = "tensorboard"

    def __init__(self, run_dir: Path, resume_step: int | None) -> None:
        # deferred: torch.utils.tensorboard imports the tensorboard package (~0.5 s)
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = run_dir / TENSORBOARD_DIR
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.run_id = str(self.log_dir)
        self.logged = LoggedSteps(held_pairs(self.log_dir, resume_step))
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def log(self, metrics: dict[str, float], step: int, epoch: float) -> None:
        # the epoch is a scalar too (W&B's x-axis choice); a second row at a step skips it
        fresh = self.logged.new({**metrics, "epoch": round(float(epoch), 4)}, step)
        if not fresh:
            return
        for key, value in fresh.items():
            self.writer.add_scalar(key, float(value), global_step=int(step))
        self.writer.flush()

    def log_files(self, paths: list[Path], folder: str) -> None:
        from PIL import Image

        for path in paths:
            if path.suffix == ".png":
                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("RGB"))  # [H, W, 3] uint8
                self.writer.add_image(f"{folder}/{path.stem}", pixels, dataformats="HWC")
        self.writer.flush()

    def finish(self, summary: dict[str, float] | None, status: RunStatus) -> None:
        self.writer.close()


def held_pairs(log_dir: Path, resume_step: int | None) -> list[tuple[str, int]]:
    """(tag, step) of the scalars already in `log_dir` at steps >= resume_step, read with
    TensorBoard's EventAccumulator (every event kept: size guidance 0)."""
    if resume_step is None or not any(log_dir.glob("events.out.tfevents.*")):
        return []
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(
        str(log_dir), size_guidance={event_accumulator.SCALARS: 0}
    )
    accumulator.Reload()
    return [
        (tag, event.step)
        for tag in accumulator.Tags()["scalars"]
        for event in accumulator.Scalars(tag)
        if event.step >= resume_step
    ]
