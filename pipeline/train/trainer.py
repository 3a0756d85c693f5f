"""The Trainer: builds loaders, model, optimizer and schedule from a Config, then trains."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn

from pipeline import checkpoint as ckpt
from pipeline.checks import run_checks
from pipeline.config import Config, config_to_dict, replace
from pipeline.data import build_loader, resolve_classes
from pipeline.data.transforms import normalize
from pipeline.distributed import DistInfo, all_reduce_sum, barrier
from pipeline.errors import EXIT_CHECK_FAILED, EXIT_OK, EXIT_STOPPED, CheckpointError, ConfigError
from pipeline.evaluate import EvalOutput, evaluate, print_final
from pipeline.metrics import write_per_class_csv
from pipeline.models import (
    AlexNet,
    apply_freeze,
    build_model,
    check_input_size,
    load_for_finetune,
    load_weights,
    set_train_mode,
)
from pipeline.optim import LearningRateSchedule, build_loss, build_optimizer, load_optimizer_state
from pipeline.precision import build_autocast, resolve_precision
from pipeline.tracking import NullTracker, build_tracker
from pipeline.train.meters import Window, progress_bar
from pipeline.train.resume import (
    TrainState,
    agree_on_checkpoint,
    changed_keys,
    first_detail,
    resume_batch,
)
from pipeline.train.run_info import record_launch
from pipeline.train.signals import StopFlag
from pipeline.train.step import step_seed

logger = logging.getLogger(__name__)

class Trainer:
    """Builds loaders, model, optimizer and schedule from a Config, then trains or evaluates."""

    def __init__(self, cfg: Config, dist: DistInfo, argv: list[str] | None = None):
        self.cfg = cfg
        self.dist = dist
        self.argv = list(argv or [])
        self.device = dist.torch_device
        self.run_dir = Path(cfg.train.run_dir)
        self.precision = resolve_precision(cfg.train.precision, self.device)
        if (
            self.precision == "bf16"
            and self.device.type == "cuda"
            and not torch.cuda.is_bf16_supported()
        ):
            raise ConfigError(
                "train.precision=bf16 but this GPU has no bf16 support: use fp16 or auto"
            )
        self.autocast = build_autocast(self.precision, self.device)
        self.memory_format = (
            torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        )
        check_input_size(cfg.data.train_crop, "data.train_crop")
        check_input_size(cfg.data.val_crop, "data.val_crop")

    # -- building -----------------------------------------------------------------------------
    def build_data(self, need_train: bool = True) -> None:
        # the class list is read once, from the train split, and both loaders index into it
        class_list = resolve_classes(self.cfg)
        self.train_loader = (
            build_loader(self.cfg, "train", self.dist, class_list) if need_train else None
        )
        self.val_loader = build_loader(self.cfg, "val", self.dist, class_list)
        self.classes = list(class_list.wnids)
        self.class_names = dict(class_list.names)
        self.num_classes = self.cfg.model.num_classes or len(self.classes)
        if self.num_classes < len(self.classes):
            raise ConfigError(
                f"model.num_classes={self.num_classes} but the data has {len(self.classes)} classes: use 0 (from the data)"
            )

    def build_model(self, load_initial_weights: bool = True) -> None:
        """The model on the device; model.finetune / model.init_from are applied unless a checkpoint will be."""
        torch.manual_seed(
            self.cfg.train.seed
        )  # identical init on every rank (DDP also broadcasts rank 0's)
        model = build_model(self.cfg.model, self.num_classes)
        if not load_initial_weights:
            pass
        elif self.cfg.model.finetune:
            load_for_finetune(model, self.cfg.model.finetune, self.cfg.model.freeze)
        elif self.cfg.model.init_from:
            load_weights(model, self.cfg.model.init_from)
        # on every build, resumes too: the optimizer must see the trainable set the checkpoint's did
        apply_freeze(model, self.cfg.model.freeze)
        self.model: AlexNet = model.to(self.device, memory_format=self.memory_format)

    def class_name_list(self) -> list[str]:
        return [self.class_names.get(wnid, wnid) for wnid in self.classes]

    # -- checkpoints --------------------------------------------------------------------------
    def checkpoint_state(self, state: TrainState) -> dict[str, Any]:
        return {
            "format": ckpt.FORMAT_VERSION,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "schedule": self.schedule.state_dict(),
            "epoch": state.epoch,
            "step": state.step,
            "batch_in_epoch": state.batch_in_epoch,
            "best_top1": state.best_top1,
            "evals_without_improvement": state.evals_without_improvement,
            "stopped_early": state.stopped_early,
            "finished": state.finished,
            "wandb_run_id": state.wandb_run_id,
            "last_eval": dict(state.last_eval),
            "rng": ckpt.capture_rng_state(),
            "config": config_to_dict(self.cfg),
            "world_size": self.dist.world_size,
            "classes": list(self.classes),
        }

    def save(self, state: TrainState, *, is_best: bool = False, epoch_file: bool = False) -> None:
        """Rank 0 writes atomically; every rank waits so nobody exits before the file exists.

        Every rank's weight fingerprint goes in too: DDP replicas must be identical, and the
        checkpoint shows that they were (and training stops with an error if they are not)."""
        fingerprints = replica_fingerprints(self.model, self.dist)
        if any(not torch.equal(fingerprints[0], other) for other in fingerprints[1:]):
            raise RuntimeError(
                f"DDP replicas diverged at step {state.step}: weight fingerprints differ across ranks"
            )
        if self.dist.is_main:
            started = time.perf_counter()
            data = self.checkpoint_state(state)
            data["replica_fingerprints"] = [f.cpu() for f in fingerprints]
            path = ckpt.save_checkpoints(data, self.run_dir, is_best=is_best, epoch_file=epoch_file)
            logger.info(
                "saved %s (epoch %d, step %d, batch %d) in %.1fs%s",
                path,
                state.epoch,
                state.step,
                state.batch_in_epoch,
                time.perf_counter() - started,
                " [best]" if is_best else "",
            )
        barrier(self.dist)

    def restore(self, path: Path, state: TrainState) -> None:
        data = ckpt.load_checkpoint(path)
        if (
            not isinstance(data, dict)
            or data.get("format") != ckpt.FORMAT_VERSION
            or "model" not in data
        ):
            raise CheckpointError(
                f"{path} is not a pipeline.train checkpoint (format {ckpt.FORMAT_VERSION}): "
                "to start from plain weights use model.init_from=PATH"
            )
        if data.get("classes") and list(data["classes"]) != list(self.classes):
            raise CheckpointError(
                f"{path} was trained on {len(data['classes'])} classes that differ from the data's "
                f"{len(self.classes)}: use model.finetune=PATH for a new class set"
            )
        self.load_model_and_optimizer(path, data)
        if data.get("scaler") is not None and self.scaler.is_enabled():
            self.scaler.load_state_dict(data["scaler"])
        self.schedule.load_state_dict(data["schedule"])
        ckpt.restore_rng_state(data["rng"])
        for name in (
            "epoch",
            "step",
            "batch_in_epoch",
            "best_top1",
            "evals_without_improvement",
            "stopped_early",
            "wandb_run_id",
        ):
            setattr(state, name, data[name])
        state.last_eval = dict(data.get("last_eval") or {})
        if state.batch_in_epoch:
            self.replan_resume_point(state, data)
        if state.batch_in_epoch:
            self.keep_wds_worker_split(state, data)
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

    def load_model_and_optimizer(self, path: Path, data: dict[str, Any]) -> None:
        """Weights and optimizer state from a checkpoint; a model or optimizer this config builds
        differently (arch, widths, optim.name, parameter groups) is one CheckpointError line."""
        old_config = data.get("config") or {}
        changed = changed_keys(old_config, config_to_dict(self.cfg))
        model_changes = [c for c in changed if c.startswith("model.")] or ["model settings"]
        try:
            self.model.load_state_dict(data["model"])
        except (RuntimeError, KeyError, ValueError) as err:
            raise CheckpointError(
                f"{path} does not fit the model this config builds ({', '.join(model_changes)} changed): "
                f"{first_detail(err)}; resume with the checkpoint's model settings or use a new "
                "train.run_dir (model.init_from/finetune=PATH to start from its weights)"
            ) from None
        old_name = (old_config.get("optim") or {}).get("name", self.cfg.optim.name)
        optim_changes = [c for c in changed if c.startswith(("optim.", "model.freeze"))]
        if old_name != self.cfg.optim.name:
            raise CheckpointError(
                f"{path} holds {old_name} state but optim.name={self.cfg.optim.name}: resume with "
                f"optim.name={old_name} or start a new train.run_dir"
            )
        try:
            reapplied = load_optimizer_state(self.optimizer, data["optimizer"])
        except (RuntimeError, KeyError, ValueError) as err:
            raise CheckpointError(
                f"{path}'s optimizer state does not fit this run's parameter groups "
                f"({', '.join(optim_changes) or 'optimizer settings'} changed): {first_detail(err)}; "
                "resume with the checkpoint's settings or start a new train.run_dir"
            ) from None
        if reapplied:
            logger.warning(
                "optimizer settings from this run's config replace the checkpoint's: %s",
                ", ".join(reapplied),
            )

    def replan_resume_point(self, state: TrainState, data: dict[str, Any]) -> None:
        """Convert a mid-epoch resume point written under another world size, global batch or
        accumulation into batches of this run's plan (via the samples the epoch had consumed).

        The point is rounded down to a whole optimizer step (a few samples may be seen twice);
        when it lands at or past the end of this run's epoch, training starts the next epoch."""
        old_config = data.get("config") or {}
        old_global = int(
            (old_config.get("data") or {}).get("global_batch_size")
            or self.cfg.data.global_batch_size
        )
        old_accum = int(
            (old_config.get("optim") or {}).get("grad_accum_steps")
            or self.cfg.optim.grad_accum_steps
        )
        old_world = data.get("world_size") or self.dist.world_size
        new_micro = (
            self.cfg.data.global_batch_size // self.accum
        )  # samples per micro-batch over all ranks
        old_micro = old_global // max(old_accum, 1)
        batches_per_epoch = self.steps_per_epoch * self.accum
        batch, epoch = resume_batch(
            state.batch_in_epoch, old_micro, new_micro, self.accum, batches_per_epoch
        )
        if (batch, epoch) == (state.batch_in_epoch, 0) and old_world == self.dist.world_size:
            return
        if (batch, epoch) != (state.batch_in_epoch, 0):
            logger.warning(
                "resume point re-planned: the checkpoint stopped at batch %d of epoch %d with %s ranks, global batch %d, "
                "accumulation %d; this run has %d ranks, global batch %d, accumulation %d (%d batches per epoch), so it "
                "resumes at %s",
                state.batch_in_epoch,
                state.epoch,
                old_world,
                old_global,
                old_accum,
                self.dist.world_size,
                self.cfg.data.global_batch_size,
                self.accum,
                batches_per_epoch,
                f"batch {batch} of epoch {state.epoch}"
                if not epoch
                else f"the start of epoch {state.epoch + 1}",
            )
        else:
            logger.warning(
                "checkpoint was written by %s ranks, now %d: the rest of epoch %d is re-planned for the new world",
                old_world,
                self.dist.world_size,
                state.epoch,
            )
        state.epoch += epoch
        state.batch_in_epoch = batch

    def keep_wds_worker_split(self, state: TrainState, data: dict[str, Any]) -> None:
        """The wds order inside an epoch depends on data.num_workers (each worker reads its own
        sub-block). A mid-epoch resume with another worker count finishes that epoch with a
        loader of the checkpoint's count, so the rest of the epoch is exactly the uninterrupted
        one; later epochs use the configured count."""
        old_data = (data.get("config") or {}).get("data") or {}
        old_workers = old_data.get("num_workers")
        same_plan = (
            data.get("world_size") == self.dist.world_size and old_data.get("backend") == "wds"
        )
        if self.cfg.data.backend != "wds" or old_workers is None or not same_plan:
            return
        if max(1, int(old_workers)) == max(1, self.cfg.data.num_workers):
            return
        logger.warning(
            "data.num_workers changed from %s to %d in the middle of epoch %d: the wds order within an epoch depends "
            "on it, so epoch %d finishes with %s loader workers and later epochs use %d",
            old_workers,
            self.cfg.data.num_workers,
            state.epoch,
            state.epoch,
            old_workers,
            self.cfg.data.num_workers,
        )
        self.resume_loader = build_loader(
            replace(self.cfg, "data", num_workers=int(old_workers)), "train", self.dist
        )
        self.resume_epoch = state.epoch

    # -- training -----------------------------------------------------------------------------
    def setup_training(self, resuming: bool) -> None:
        self.build_data(need_train=True)
        self.build_model(load_initial_weights=not resuming)
        self.optimizer = build_optimizer(self.cfg, self.model)
        self.criterion = build_loss(self.cfg)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.accum = self.cfg.optim.grad_accum_steps
        self.train_loader.set_epoch(0)
        self.steps_per_epoch = self.train_loader.batches_per_epoch() // self.accum
        planned = self.cfg.train.epochs * self.steps_per_epoch
        # max_steps truncates the run but not the schedule: the lr at step s is the same whatever max_steps is
        self.total_steps = (
            min(planned, self.cfg.train.max_steps) if self.cfg.train.max_steps else planned
        )
        self.schedule = LearningRateSchedule(self.cfg, self.steps_per_epoch, planned)

    def wrap_model(self) -> tuple[nn.Module, nn.Module | None]:
        """(the module the step calls, the DDP module or None). Eval always uses self.model."""
        ddp = None
        step_model: nn.Module = self.model
        if self.dist.is_distributed:
            ddp = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                gradient_as_bucket_view=True,
            )
            step_model = ddp
        if self.cfg.train.compile:
            step_model = torch.compile(step_model)
        return step_model, ddp

    def train(self, resume: Path | None) -> int:
        cfg, dist = self.cfg, self.dist
        if dist.is_main:
            for stale in ckpt.remove_stale_temps(self.run_dir):
                logger.info("removed %s, left by a save that was killed", stale)
        # rank 0 decides: with node-local or cached run dirs, ranks could otherwise disagree
        resume = agree_on_checkpoint(
            resume or (ckpt.find_latest(self.run_dir) if dist.is_main else None), dist
        )
        self.setup_training(resuming=resume is not None)
        state = TrainState()
        if resume is not None:
            self.restore(resume, state)
        if dist.is_main:
            record_launch(cfg, dist, self.run_dir, self.argv, resume)
        tracker = build_tracker(cfg, dist, self.run_dir, state.wandb_run_id or None)
        state.wandb_run_id = tracker.run_id if dist.is_main else state.wandb_run_id
        logger.info(
            "%s: %d classes, %d train / %d val images, %d steps per epoch, %d steps in all, precision %s, world %d",
            cfg.model.arch,
            self.num_classes,
            self.train_loader.num_samples,
            self.val_loader.num_samples,
            self.steps_per_epoch,
            self.total_steps,
            self.precision,
            dist.world_size,
        )
        stop = StopFlag(dist)
        try:
            code = self.train_loop(state, tracker, stop, fresh=resume is None)
        finally:
            stop.restore()
        if code == EXIT_STOPPED:
            tracker.finish(plots=False)
            return code
        return self.finish(state, tracker)

    def train_loop(
        self, state: TrainState, tracker: NullTracker, stop: StopFlag, fresh: bool
    ) -> int:
        cfg, dist = self.cfg, self.dist
        step_model, ddp = self.wrap_model()
        window = Window(self.device)
        first_batch = fresh
        # a stop after an epoch's last step saves batch_in_epoch == full: that epoch's eval is still due
        epoch_end_pending = state.batch_in_epoch >= self.steps_per_epoch * self.accum
        state.finished = state.stopped_early or (
            state.step >= self.total_steps and not epoch_end_pending
        )
        while not state.finished:
            epoch = state.epoch
            loader = self.train_loader
            if getattr(self, "resume_loader", None) is not None:
                if epoch == self.resume_epoch:
                    loader = self.resume_loader
                else:
                    self.resume_loader = None  # its workers go with it
            loader.set_epoch(epoch, start_batch=state.batch_in_epoch)
            set_train_mode(self.model, cfg.model.freeze)
            batches_left = self.steps_per_epoch * self.accum - state.batch_in_epoch
            progress = progress_bar(
                dist,
                total=self.steps_per_epoch,
                initial=state.batch_in_epoch // self.accum,
                desc=f"epoch {epoch}",
            )
            window.restart()
            micro = 0
            for images, labels in loader:  # images: [B, 3, H, W] uint8 on device
                window.data_ready()
                if first_batch and cfg.train.sanity_grid:
                    tracker.save_batch_grid(images, labels, self.class_name_list())
                first_batch = False
                if micro == 0:
                    torch.manual_seed(step_seed(cfg.train.seed, dist.rank, state.step))
                    lr = self.schedule.apply(self.optimizer, state.step)
                sync = (
                    ddp.no_sync()
                    if ddp is not None and micro < self.accum - 1
                    else contextlib.nullcontext()
                )
                with sync:
                    with self.autocast():
                        logits = step_model(normalize(images))  # [B, C]
                        loss = self.criterion(logits.float(), labels)
                    self.scaler.scale(loss / self.accum).backward()
                window.add(loss, logits, labels)
                micro += 1
                batches_left -= 1
                if micro < self.accum:
                    if batches_left <= 0:
                        break
                    continue
                micro = 0
                if cfg.optim.clip_grad_norm > 0:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.clip_grad_norm)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                state.step += 1
                state.batch_in_epoch += self.accum
                window.step_done(images.shape[0] * self.accum)
                progress.update(1)
                if state.step % cfg.train.log_every == 0:
                    metrics = window.reduce(dist)
                    metrics["opt/lr"] = lr
                    if self.scaler.is_enabled():
                        metrics["opt/loss_scale"] = float(self.scaler.get_scale())
                    progress.set_postfix(loss=f"{metrics['train/loss']:.3f}", lr=f"{lr:.2e}")
                    tracker.log(
                        metrics,
                        state.step,
                        epoch + state.batch_in_epoch / (self.steps_per_epoch * self.accum),
                    )
                    window.restart()
                if stop.agreed():
                    progress.close()
                    self.save(state)
                    logger.warning(
                        "stopped by %s at step %d (epoch %d, batch %d): rerun with the same run dir to resume",
                        signal.Signals(stop.received).name
                        if stop.received
                        else "a signal on another rank",
                        state.step,
                        state.epoch,
                        state.batch_in_epoch,
                    )
                    return EXIT_STOPPED
                if state.step >= self.total_steps or batches_left <= 0:
                    break
            progress.close()
            resume_point = dataclasses.replace(
                state, last_eval=dict(state.last_eval)
            )  # before the epoch-end work
            if state.batch_in_epoch >= self.steps_per_epoch * self.accum:
                state.epoch += 1
                state.batch_in_epoch = 0
            state.finished = state.step >= self.total_steps
            epoch_done = state.batch_in_epoch == 0
            due = epoch_done and (
                state.epoch % cfg.train.eval_every == 0 or state.epoch >= cfg.train.epochs
            )
            is_best = False
            if due or state.finished:
                # torchrun kills 30 s after TERM: a signal before or during this eval writes last.pt only,
                # at the point before it (resume_point), and the resumed run does this eval first
                output = self.evaluate_and_report(state, tracker, stop)
                if output is None:
                    self.save(resume_point)
                    logger.warning(
                        "stopped by a signal before the eval at step %d: rerun with the same run dir to "
                        "resume (it evaluates first)",
                        state.step,
                    )
                    return EXIT_STOPPED
                top1 = output.result.top1
                self.schedule.observe(top1)
                if top1 > state.best_top1:
                    state.best_top1 = top1
                    state.evals_without_improvement = 0
                    is_best = True
                else:
                    state.evals_without_improvement += 1
                patience = cfg.train.early_stop_patience
                if patience and state.evals_without_improvement >= patience and not state.finished:
                    logger.info(
                        "early stop: val top-1 has not improved for %d evaluations (best %.2f%%)",
                        patience,
                        state.best_top1,
                    )
                    state.stopped_early = state.finished = True
            save_epoch = (
                epoch_done and cfg.train.save_every > 0 and state.epoch % cfg.train.save_every == 0
            )
            self.save(state, is_best=is_best, epoch_file=save_epoch)
            stopped = stop.agreed()  # every rank calls it: it is a collective
            if stopped and not state.finished:
                logger.warning(
                    "stopped by a signal after epoch %d: rerun with the same run dir to resume",
                    state.epoch,
                )
                return EXIT_STOPPED
        return EXIT_OK

    def evaluate_and_report(
        self, state: TrainState, tracker: NullTracker, stop: StopFlag | None = None
    ) -> EvalOutput | None:
        """Eval, log, per-class CSV. With `stop`: None (nothing logged) when a signal arrived before or during it."""
        interrupted = stop.pending if stop is not None else None
        output = evaluate(
            self.model,
            self.val_loader,
            self.num_classes,
            self.dist,
            self.autocast,
            interrupted=interrupted,
        )
        if stop is not None and stop.agreed():
            return None
        result = output.result
        state.last_eval = result.as_metrics()
        epoch_position = state.epoch + state.batch_in_epoch / max(
            1, self.steps_per_epoch * self.accum
        )
        tracker.log(result.as_metrics(), state.step, epoch_position)
        logger.info(
            "eval at step %d: val/top1=%.2f val/top5=%.2f val/loss=%.4f val/macro_f1=%.2f (%d images)",
            state.step,
            result.top1,
            result.top5,
            result.loss,
            result.macro_f1,
            result.num_samples,
        )
        if self.dist.is_main:
            write_per_class_csv(
                result, self.classes, self.class_names, self.run_dir / "per_class_accuracy.csv"
            )
        self.last_examples = output.examples
        return output

    def finish(self, state: TrainState, tracker: NullTracker) -> int:
        """After training (or on a rerun of a finished run): final metrics line, grids, plots."""
        # the same decision on every rank (eval is a collective): a rank with no val samples has no examples
        if not state.last_eval or not hasattr(self, "last_examples"):
            self.evaluate_and_report(state, tracker)
        if self.cfg.log.plots and getattr(self, "last_examples", None) is not None:
            images, labels, predictions = self.last_examples
            tracker.save_prediction_grid(images, labels, predictions, self.class_name_list())
        tracker.finish(summary=state.last_eval, plots=self.cfg.log.plots)
        print_final(state.last_eval, self.dist)
        return EXIT_OK

    # -- --evaluate and --check ----------------------------------------------------------------
    def evaluate_only(self, resume: Path | None) -> int:
        """Weights, first found: --resume PATH, RUN_DIR/checkpoints/last.pt, model.init_from.
        The run dir comes before init_from/finetune: a run started from those weights has
        trained past them, and model.finetune alone has a fresh random head."""
        self.build_data(need_train=False)
        source = agree_on_checkpoint(
            resume or (ckpt.find_latest(self.run_dir) if self.dist.is_main else None), self.dist
        )
        if source is None and self.cfg.model.finetune:
            raise ConfigError(
                f"nothing to evaluate: model.finetune={self.cfg.model.finetune} alone gets a new random head and "
                f"{self.run_dir / 'checkpoints'} has no last.pt; evaluate the fine-tune run's checkpoint "
                "(its train.run_dir or --resume PATH)"
            )
        self.build_model(load_initial_weights=source is None)
        explicit_weights = bool(self.cfg.model.init_from)
        if source is not None:
            data = ckpt.load_checkpoint(source)
            weights = (
                data["model"]
                if isinstance(data, dict) and isinstance(data.get("model"), dict)
                else None
            )
            if weights is None:
                load_weights(self.model, source)
            else:
                self.model.load_state_dict(weights)
            logger.info("evaluating weights from %s", source)
        elif not explicit_weights:
            raise ConfigError(
                f"nothing to evaluate: no checkpoint in {self.run_dir / 'checkpoints'}; "
                "pass --resume PATH or --init-from WEIGHTS"
            )
        output = evaluate(self.model, self.val_loader, self.num_classes, self.dist, self.autocast)
        if self.dist.is_main:
            write_per_class_csv(
                output.result,
                self.classes,
                self.class_names,
                self.run_dir / "per_class_accuracy.csv",
            )
            report = {
                **output.result.as_metrics(),
                "val/num_samples": output.result.num_samples,
                "weights": str(source or self.cfg.model.init_from or self.cfg.model.finetune),
                "world_size": self.dist.world_size,
            }
            (self.run_dir / "eval.json").write_text(json.dumps(report, indent=1) + "\n")
        logger.info(
            "val/loss=%.4f val/macro_f1=%.2f on %d images",
            output.result.loss,
            output.result.macro_f1,
            output.result.num_samples,
        )
        print_final(output.result.as_metrics(), self.dist)
        return EXIT_OK

    def check(self) -> int:
        self.build_data(need_train=True)
        self.train_loader.set_epoch(0)
        images, labels = next(iter(self.train_loader))
        scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.precision == "fp16"
        )  # as training steps
        report = run_checks(self.cfg, self.num_classes, images, labels, self.autocast, scaler)
        ok = torch.tensor([1 if report.overfit_ok else 0], dtype=torch.int32, device=self.device)
        all_reduce_sum(ok, self.dist)
        if self.dist.is_main:
            for line in report.lines():
                print(line, flush=True)
        return EXIT_OK if int(ok.item()) == self.dist.world_size else EXIT_CHECK_FAILED


def replica_fingerprints(model: nn.Module, dist: DistInfo) -> list[torch.Tensor]:
    """Every rank's [sum, sum of squares] per parameter tensor (float64), in rank order."""
    with torch.no_grad():
        local = torch.stack(
            [torch.stack([p.double().sum(), p.double().square().sum()]) for p in model.parameters()]
        ).flatten()
    if not dist.is_distributed:
        return [local]
    gathered = [torch.zeros_like(local) for _ in range(dist.world_size)]
    torch_dist.all_gather(gathered, local)
    return gathered
