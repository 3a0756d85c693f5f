"""The Trainer: one training run, whole after `__init__`.

    trainer = Trainer(cfg, dist, argv, resume=None)   # loaders, model, optimizer, resume point
    code = trainer.train()                            # EXIT_OK, or EXIT_STOPPED after a signal

`__init__` reads as a table of contents (ffcv-imagenet's ImageNetTrainer): the class list, the
loaders, the model, the optimizer and schedule, the resume point, the DDP wrapper, the step,
the tracker. `train()` is a short loop over `train_epoch()` and `end_epoch()`.

Stopping: SIGTERM, SIGUSR1 or SIGUSR2 set a flag; after the current optimizer step every rank
learns of it (pipeline/train/signals.py), rank 0 writes last.pt, which resumes at the next
batch, and every rank returns EXIT_STOPPED. A signal after an epoch's last step or during its
eval cuts the eval short and saves the point before it (batch_in_epoch = the whole epoch): the
resumed run does that eval, best.pt and epoch_NNN.pt first.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from pipeline import checkpoint as ckpt
from pipeline.augment import BatchAugment
from pipeline.comm import GradientComm
from pipeline.config import Config, config_to_dict
from pipeline.data import Loader, build_loader, resolve_classes
from pipeline.data.transforms import train_resolution
from pipeline.distributed import (
    DistInfo,
    barrier,
    broadcast_buffers,
    broadcast_object,
    replica_fingerprints,
)
from pipeline.errors import EXIT_OK, EXIT_STOPPED, CheckpointError
from pipeline.evaluate import EvalOutput, ema_named, evaluate, print_final
from pipeline.export import export_for_trackers
from pipeline.metrics import write_per_class_csv
from pipeline.models import (
    check_input_sizes,
    count_parameters,
    create_model,
    resolve_num_classes,
    set_train_mode,
)
from pipeline.optim import LearningRateSchedule, build_optimizer
from pipeline.precision import build_precision, configure_device
from pipeline.tracking import NullTracker, build_tracker
from pipeline.train.ema import WeightEMA
from pipeline.train.meters import TrainMeter, progress_bar
from pipeline.train.resume import (
    TrainState,
    build_resume_loader,
    changed_keys,
    data_plan_record,
    load_model_and_optimizer,
    read_training_checkpoint,
)
from pipeline.train.run_info import record_launch
from pipeline.train.signals import StopFlag
from pipeline.train.step import OptimizerStep, build_model_views, build_optimizer_step
from pipeline.train.watchdog import Phase, Progress, Watchdog

logger = logging.getLogger(__name__)


class Trainer:
    """Builds every part of a run from a Config and a resume point, then trains."""

    def __init__(
        self, cfg: Config, dist: DistInfo, argv: list[str] | None = None, resume: Path | None = None
    ) -> None:
        self.cfg = cfg
        self.dist = dist
        self.device = dist.torch_device
        self.run_dir = Path(cfg.train.run_dir)
        configure_device(self.device)
        self.precision = build_precision(cfg.train.precision, self.device)  # autocast, GradScaler
        check_input_sizes(cfg)
        self.resume_from = self.choose_checkpoint(resume)

        # data: the class list is read once, and both loaders index into it
        self.classes = resolve_classes(cfg)
        self.num_classes = resolve_num_classes(cfg.model, len(self.classes))
        self.train_loader = build_loader(cfg, "train", dist, self.classes)
        self.val_loader = build_loader(cfg, "val", dist, self.classes)
        self.accum = cfg.optim.grad_accum_steps
        self.steps_per_epoch = self.train_loader.batches_per_epoch() // self.accum
        self.batches_per_epoch = self.steps_per_epoch * self.accum  # a partial group is dropped
        self.total_steps = self.plan_total_steps()

        # model, optimizer, schedule, batch augmentation, weight EMA
        self.model = create_model(
            cfg, self.num_classes, self.device, load_initial_weights=self.resume_from is None
        )
        self.optimizer = build_optimizer(cfg, self.model)
        self.schedule = self.create_schedule()
        self.augment = BatchAugment(cfg.augment, self.num_classes, cfg.optim.label_smoothing)
        self.ema = self.create_ema()

        # where training is: a fresh state, or the checkpoint's
        self.state = TrainState()
        self.resume_loader: Loader | None = None  # finishes an interrupted epoch (see restore)
        self.resume_epoch = -1  # the epoch resume_loader is for
        comm_state = self.restore(self.resume_from) if self.resume_from is not None else None

        # the step and its bookkeeping
        self.model_views = build_model_views(cfg, dist, self.model, ddp=dist.is_distributed)
        self.comm = self.create_comm(comm_state)
        self.num_parameters = count_parameters(self.model)
        self.tracker = self.create_tracker(argv)
        self.meter = self.create_meter()  # holds the phase marks: the stall watchdog's view
        self.progress = self.meter.progress
        self.take_step = self.create_step()
        self.last_eval_output: EvalOutput | None = None  # this process's latest eval
        self.last_save = time.monotonic()  # train.save_every_minutes counts from here (rank 0)
        self.watchdog = Watchdog(dist, self.progress, self.run_dir, cfg.train.stall_timeout_s)
        self.stop = StopFlag(dist)  # last: from here on a signal means "checkpoint and stop"

    # -- building -----------------------------------------------------------------------------
    def choose_checkpoint(self, resume: Path | None) -> Path | None:
        """--resume PATH, else the newest good checkpoint of RUN_DIR (last.pt, or a previous one
        when last.pt fails its check: see pipeline/checkpoint.py); rank 0 decides. Rank 0 first
        removes the temp files a killed save left behind."""
        latest, error = None, None
        if self.dist.is_main and resume is None:
            for stale in ckpt.remove_killed_saves(self.run_dir):
                logger.info("removed %s, left by a save that was killed", stale)
            try:
                latest = ckpt.find_good_checkpoint(self.run_dir)
            except CheckpointError as err:
                error = str(err)
        error = broadcast_object(error, self.dist)  # every rank fails with rank 0's line
        if error is not None:
            raise CheckpointError(error)
        return ckpt.agree_on_checkpoint(resume or latest, self.dist)

    def plan_total_steps(self) -> int:
        """The run's optimizer steps: train.epochs of them, or train.max_steps if fewer (it
        truncates the run, not the schedule: the lr at step s is the same either way)."""
        planned = self.cfg.train.epochs * self.steps_per_epoch
        return min(planned, self.cfg.train.max_steps) if self.cfg.train.max_steps else planned

    def create_schedule(self) -> LearningRateSchedule:
        planned = self.cfg.train.epochs * self.steps_per_epoch
        return LearningRateSchedule(self.cfg, self.steps_per_epoch, planned)

    def create_ema(self) -> WeightEMA | None:
        """The weight EMA of the current weights (None when train.ema_decay is 0)."""
        train = self.cfg.train
        return (
            WeightEMA(self.model, train.ema_decay, train.ema_warmup_steps)
            if train.ema_decay
            else None
        )

    def create_comm(self, comm_state: dict[str, Any] | None) -> GradientComm:
        """The gradient hook on the DDP module, with the checkpoint's hook state when resuming
        (after registration: PowerSGD's state is per bucket)."""
        comm = GradientComm(
            self.cfg.train, self.dist, self.model_views.ddp, self.model, self.precision.name
        )
        if self.resume_from is not None:
            comm.load_state_dict(comm_state)
        return comm

    def create_tracker(self, argv: list[str] | None) -> NullTracker:
        """Records the launch (rank 0), then starts the trackers on rank 0, continuing the
        checkpoint's W&B and MLflow runs (their ids go into the next checkpoint; a tracker that
        could not start keeps its old id), and logs the parameter count on a fresh run."""
        cfg, dist, state = self.cfg, self.dist, self.state
        facts = {"model/arch": cfg.model.arch, "model/params": self.num_parameters}
        if dist.is_main:
            record_launch(cfg, dist, self.run_dir, list(argv or []), self.resume_from, facts)
        run_ids = {"wandb": state.wandb_run_id, "mlflow": state.mlflow_run_id}
        resume_step = state.step if self.resume_from is not None else None
        tracker = build_tracker(cfg, dist, self.run_dir, run_ids, resume_step)
        if dist.is_main:
            state.wandb_run_id = tracker.run_id("wandb") or state.wandb_run_id
            state.mlflow_run_id = tracker.run_id("mlflow") or state.mlflow_run_id
        if self.resume_from is None:  # a fact of the run, logged once
            tracker.log({"model/params": self.num_parameters}, state.step, self.epoch_position())
        return tracker

    def create_meter(self) -> TrainMeter:
        accuracy = "train/top1_dominant" if self.augment.mixes else "train/top1"
        every = self.cfg.train.log_every
        return TrainMeter(self.dist, self.tracker, every, accuracy, progress=Progress())

    def create_step(self) -> OptimizerStep:
        """The optimizer step, from the one factory, around this run's own parts."""
        return build_optimizer_step(
            self.cfg,
            self.dist,
            self.model_views,
            self.precision,
            optimizer=self.optimizer,
            schedule=self.schedule,
            meter=self.meter,
            augment=self.augment,
        )

    # -- checkpoints --------------------------------------------------------------------------
    def checkpoint_state(self, state: TrainState) -> dict[str, Any]:
        scaler = self.precision.scaler
        return {
            "format": ckpt.FORMAT_VERSION,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            # on the CPU: Optimizer.load_state_dict moves it back to each parameter's device
            "optimizer": ckpt.to_cpu(self.optimizer.state_dict()),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "schedule": self.schedule.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            **state.as_checkpoint(),
            "rng": ckpt.capture_rng_state(),
            "config": config_to_dict(self.cfg),
            "world_size": self.dist.world_size,
            "data_plan": data_plan_record(state, self.epoch_loader(state.epoch), self.cfg),
            "classes": list(self.classes.wnids),
            "class_names": self.classes.display_names(),  # for predict and export
        }

    def save(self, state: TrainState, *, is_best: bool = False, epoch_file: bool = False) -> None:
        """Rank 0 writes atomically; every rank waits so nobody exits before the file exists.

        Every rank's weight fingerprint goes in too: DDP replicas must be identical, and the
        checkpoint shows that they were (and training stops with an error if they are not)."""
        self.progress.mark(Phase.ALL_REDUCE, state.step)
        fingerprints = replica_fingerprints(self.model, self.dist)
        if self.ema is not None:  # every rank's EMA must be identical too
            ema_prints = replica_fingerprints(self.ema.model, self.dist)
            fingerprints = [torch.cat(pair) for pair in zip(fingerprints, ema_prints)]
        if any(not torch.equal(fingerprints[0], other) for other in fingerprints[1:]):
            raise RuntimeError(
                f"DDP replicas diverged at step {state.step}: weight fingerprints differ across "
                "ranks"
            )
        comm_state = self.comm.state_dict()  # a collective: every rank's PowerSGD memories
        if self.dist.is_main:
            self.progress.mark(Phase.CHECKPOINT)
            started = time.perf_counter()
            data = self.checkpoint_state(state)
            data["replica_fingerprints"] = [f.cpu() for f in fingerprints]
            data["comm"] = comm_state
            path = ckpt.save_checkpoints(
                data,
                self.run_dir,
                is_best=is_best,
                epoch_file=epoch_file,
                keep_last=self.cfg.train.keep_last,
            )
            logger.info(
                "saved %s (epoch %d, step %d, batch %d) in %.1fs%s",
                path,
                state.epoch,
                state.step,
                state.batch_in_epoch,
                time.perf_counter() - started,
                " [best]" if is_best else "",
            )
        self.progress.mark(Phase.ALL_REDUCE)
        barrier(self.dist)
        self.last_save = time.monotonic()

    def restore(self, path: Path) -> dict[str, Any] | None:
        """Model, optimizer, scaler, schedule, RNG and training state from a checkpoint; returns
        its comm-hook state (None in checkpoints without one) for after the DDP wrap."""
        data = read_training_checkpoint(path, self.classes.wnids)
        load_model_and_optimizer(self.model, self.optimizer, data, self.cfg, path)
        if data.get("scaler") is not None and self.precision.scaler.is_enabled():
            self.precision.scaler.load_state_dict(data["scaler"])
        self.schedule.load_state_dict(data["schedule"])
        if self.ema is not None and data.get("ema") is not None:
            self.ema.load_state_dict(data["ema"])
        elif self.ema is not None:
            self.ema = self.create_ema()
            logger.warning("%s holds no weight EMA: it starts from the resumed weights", path)
        elif data.get("ema") is not None:
            logger.warning("%s holds a weight EMA but train.ema_decay=0: it is dropped", path)
        ckpt.restore_rng_state(data["rng"])
        state = self.state = TrainState.from_checkpoint(data)
        if state.batch_in_epoch:
            # the rest of the interrupted epoch: under another plan, exactly once
            loaders = (self.train_loader, self.classes, self.batches_per_epoch)
            self.resume_loader = build_resume_loader(state, data, self.cfg, self.dist, *loaders)
            self.resume_epoch = state.epoch
        changed = changed_keys(data.get("config") or {}, config_to_dict(self.cfg))
        if changed:
            logger.warning("config differs from the checkpoint's in %s", ", ".join(changed))
        logger.info(
            "resumed from %s: epoch %d, step %d, batch %d",
            path,
            state.epoch,
            state.step,
            state.batch_in_epoch,
        )
        return data.get("comm")

    # -- training -----------------------------------------------------------------------------
    def train(self) -> int:
        """Train to the end (EXIT_OK, after the final metrics and plots) or to a stop signal
        (EXIT_STOPPED, after a resumable checkpoint)."""
        cfg, state = self.cfg, self.state
        logger.info(
            "%s (%.1fM parameters): %d classes, %d train / %d val images, %d steps per epoch, "
            "%d steps in all, precision %s, world %d",
            cfg.model.arch,
            self.num_parameters / 1e6,
            self.num_classes,
            self.train_loader.num_samples,
            self.val_loader.num_samples,
            self.steps_per_epoch,
            self.total_steps,
            self.precision.name,
            self.dist.world_size,
        )
        # a stop after an epoch's last step saves batch_in_epoch == full: that eval is still due
        epoch_end_pending = state.batch_in_epoch >= self.batches_per_epoch
        state.finished = state.stopped_early or (
            state.step >= self.total_steps and not epoch_end_pending
        )
        sanity_grid = cfg.train.sanity_grid and self.resume_from is None
        # Everything built so far (torch's modules, the model, the loaders' tables: ~10^5-10^6
        # objects) lives to the end: out of the cyclic collector's way, a full collection no
        # longer walks it. The wds loader's sample dicts reach the oldest generation through
        # its shuffle buffer, and each full collection over the start-up's objects held the GIL
        # for ~0.1 s that the loader threads wait on (0.02 CPU ms per image, 2026-12-06).
        # Unfrozen when the loop ends, so that a process running several trainers (tests, a
        # sweep) still collects the cycles of the ones it dropped.
        gc.freeze()
        self.watchdog.start()
        try:
            while not state.finished:
                if not self.train_epoch(sanity_grid):
                    return self.stopped()
                sanity_grid = False
                if not self.end_epoch():
                    return self.stopped()
        finally:
            self.stop.restore()
            gc.unfreeze()
        result = self.finish()
        self.watchdog.stop()
        return result

    def train_epoch(self, sanity_grid: bool) -> bool:
        """The rest of the current epoch's optimizer steps (up to the run's last step). False
        when a stop signal ended it; last.pt then resumes at the next batch."""
        state = self.state
        loader = self.epoch_loader(state.epoch)
        loader.set_epoch(state.epoch, start_batch=state.batch_in_epoch)
        size = train_resolution(self.cfg.data, state.epoch)
        if self.cfg.data.res_start and (
            state.epoch == 0 or size != train_resolution(self.cfg.data, state.epoch - 1)
        ):
            logger.info("epoch %d: training at %d px (the resolution schedule)", state.epoch, size)
        set_train_mode(self.model)
        steps_left = self.steps_per_epoch - state.batch_in_epoch // self.accum
        steps = max(0, min(steps_left, self.total_steps - state.step))
        progress = progress_bar(
            self.dist,
            total=self.steps_per_epoch,
            initial=state.batch_in_epoch // self.accum,
            desc=f"epoch {state.epoch}",
        )
        self.meter.restart()
        self.progress.mark(Phase.START, state.step)  # the loader's workers start: more time
        batches = self.meter.log_every(loader)  # times the wait for every batch
        if sanity_grid:
            batches = self.write_sanity_grid(batches)
        try:
            for _ in range(steps):
                lr = self.take_step(batches, state.step)
                state.step += 1
                if self.ema is not None:
                    self.ema.update(self.model, state.step)
                state.batch_in_epoch += self.accum
                progress.update(1)
                logged = self.meter.end_step(
                    state.step, self.epoch_position(), self.opt_metrics(lr)
                )
                if logged is not None:
                    progress.set_postfix(loss=f"{logged['train/loss']:.3f}", lr=f"{lr:.2e}")
                self.progress.mark(Phase.ALL_REDUCE)
                # one collective per step on every rank: a stop signal, or rank 0's timed save
                stop, timed_save = self.stop.agree_step(self.timed_save_due())
                if timed_save and not stop:
                    self.save(state)  # mid-epoch: resumes at the next batch, as a signal's does
                if stop:
                    # said before the save: under srun --kill-on-bad-exit the first node to exit
                    # 75 ends the others, and rank 0's line must be out by then
                    logger.warning(
                        "stopped by %s at step %d (epoch %d, batch %d): rerun with the same run "
                        "dir to resume",
                        self.stop.signal_name(),
                        state.step,
                        state.epoch,
                        state.batch_in_epoch,
                    )
                    self.save(state)
                    return False
        finally:
            progress.close()
        return True

    def end_epoch(self) -> bool:
        """After an epoch's steps, or the run's last: the epoch-end eval when it is due, early
        stopping, and the saves. False when a stop signal arrived."""
        cfg, state = self.cfg, self.state
        resume_point = state.copy()  # a signal during the eval below saves this point
        if state.batch_in_epoch >= self.batches_per_epoch:
            state.epoch += 1
            state.batch_in_epoch = 0
        state.finished = state.step >= self.total_steps
        epoch_done = state.batch_in_epoch == 0
        due = epoch_done and (
            state.epoch % cfg.train.eval_every == 0 or state.epoch >= cfg.train.epochs
        )
        is_best = False
        if due or state.finished:
            # torchrun kills 30 s after TERM: a signal before or during this eval writes last.pt
            # only, at the point before it, and the resumed run does this eval first
            output = self.evaluate_and_report(interruptible=True)
            if output is None:
                self.save(resume_point)
                logger.warning(
                    "stopped by %s at step %d, before its eval: rerun with the same run dir to "
                    "resume (it evaluates first)",
                    self.stop.signal_name(),
                    state.step,
                )
                return False
            is_best = self.observe(state.last_eval[cfg.eval.best_metric])
        save_epoch = (
            epoch_done and cfg.train.save_every > 0 and state.epoch % cfg.train.save_every == 0
        )
        self.save(state, is_best=is_best, epoch_file=save_epoch)
        if self.stop.agreed() and not state.finished:  # a collective: every rank calls it
            logger.warning(
                "stopped by %s at step %d, after epoch %d: rerun with the same run dir to resume",
                self.stop.signal_name(),
                state.step,
                state.epoch,
            )
            return False
        return True

    def observe(self, score: float) -> bool:
        """Best score (eval.best_metric), early stopping and the plateau schedule after an eval;
        True when best."""
        state = self.state
        self.schedule.observe(score)
        is_best = score > state.best_top1
        if is_best:
            state.best_top1 = score
            state.evals_without_improvement = 0
        else:
            state.evals_without_improvement += 1
        patience = self.cfg.train.early_stop_patience
        if patience and state.evals_without_improvement >= patience and not state.finished:
            logger.info(
                "early stop: %s has not improved for %d evaluations (best %.2f%%)",
                self.cfg.eval.best_metric,
                patience,
                state.best_top1,
            )
            state.stopped_early = state.finished = True
        return is_best

    def timed_save_due(self) -> bool:
        """train.save_every_minutes have passed since the last save (rank 0's clock decides)."""
        minutes = self.cfg.train.save_every_minutes
        return bool(minutes) and time.monotonic() - self.last_save >= minutes * 60

    def stopped(self) -> int:
        """After a stop signal's checkpoint: close the tracker (no plots)."""
        self.watchdog.stop()
        self.tracker.finish(plots=False, stopped=True)
        barrier(self.dist)  # every rank exits 75 together, after rank 0's tracker is closed
        return EXIT_STOPPED

    def epoch_loader(self, epoch: int) -> Loader:
        """The train loader; an interrupted wds epoch finishes with the checkpoint's worker
        count."""
        if self.resume_loader is not None and epoch != self.resume_epoch:
            self.resume_loader = None  # its workers go with it
        return self.resume_loader or self.train_loader

    def write_sanity_grid(self, batches: Iterator) -> Iterator:
        """Pass the batches through; the first one also becomes plots/train_batch.png."""
        first = True
        for images, labels in batches:
            if first:
                self.tracker.save_batch_grid(images, labels, self.classes.display_names())
                first = False
            yield images, labels

    def epoch_position(self) -> float:
        """Epochs done, with the current one's fraction (the x axis of the curves)."""
        return self.state.epoch + self.state.batch_in_epoch / max(1, self.batches_per_epoch)

    def opt_metrics(self, lr: float) -> dict[str, float]:
        metrics = {"opt/lr": lr, "train/res": train_resolution(self.cfg.data, self.state.epoch)}
        if self.precision.scaler.is_enabled():
            metrics["opt/loss_scale"] = float(self.precision.scaler.get_scale())
        return metrics

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate_and_report(self, interruptible: bool = False) -> EvalOutput | None:
        """Eval, log, per-class CSV. Interruptible: None (nothing logged) when a signal arrived
        before or during it."""
        state = self.state
        self.progress.mark(Phase.EVAL, state.step)
        pending = self.stop.pending if interruptible else None

        def interrupted() -> bool:  # asked before every val batch: progress for the watchdog
            self.progress.mark(Phase.EVAL)
            return pending is not None and pending()

        broadcast_buffers(self.model, self.dist)  # every rank scores the model rank 0 saves
        flip_tta = self.cfg.eval.flip_tta
        output = evaluate(
            self.model,
            self.val_loader,
            self.num_classes,
            self.dist,
            self.precision.autocast,
            interrupted=interrupted,
            flip_tta=flip_tta,
        )
        metrics = output.metrics()
        if self.ema is not None:  # the EMA's scores beside the raw weights'
            ema_output = evaluate(
                self.ema.model,
                self.val_loader,
                self.num_classes,
                self.dist,
                self.precision.autocast,
                keep_examples=0,
                interrupted=interrupted,
                flip_tta=flip_tta,
            )
            metrics.update(ema_named(ema_output.metrics()))
        if interruptible and self.stop.agreed():
            return None
        result = output.result
        state.last_eval = metrics
        self.tracker.log(metrics, state.step, self.epoch_position())
        logger.info(
            "eval at step %d: val/top1=%.2f val/top5=%.2f val/loss=%.4f val/macro_f1=%.2f "
            "(%d images)",
            state.step,
            result.top1,
            result.top5,
            result.loss,
            result.macro_f1,
            result.num_samples,
        )
        if self.dist.is_main:
            write_per_class_csv(
                result,
                list(self.classes.wnids),
                dict(self.classes.names),
                self.run_dir / "per_class_accuracy.csv",
            )
        self.last_eval_output = output
        return output

    def finish(self) -> int:
        """After training (or on a rerun of a finished run): final metrics line, grids, plots."""
        state = self.state
        # the same decision on every rank (eval is a collective), whether or not a rank has examples
        if not state.last_eval or self.last_eval_output is None:
            self.evaluate_and_report()
        examples = self.last_eval_output.examples if self.last_eval_output else None
        if self.cfg.log.plots and examples is not None:
            images, labels, predictions = examples
            self.tracker.save_prediction_grid(
                images, labels, predictions, self.classes.display_names()
            )
        if self.tracker.takes_weights:
            path = export_for_trackers(self.run_dir, self.cfg.eval.best_metric)
            if path is not None:
                self.tracker.log_files([path], "model")
        self.tracker.finish(summary=state.last_eval, plots=self.cfg.log.plots)
        print_final(state.last_eval, self.dist)
        return EXIT_OK
