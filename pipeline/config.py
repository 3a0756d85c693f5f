"""One typed config for a run: a YAML file sets defaults, `section.key=value` overrides them.

    python -m pipeline.train --config configs/alexnet.yaml optim.lr=0.02 data.backend=dali

Each field carries its help text as metadata (not a comment) so the README's config reference
is generated from this file and cannot drift (`python -m pipeline.config_reference --markdown`).
An unknown section or key is an error, never ignored. The resolved config is saved with every
run and never mutated after start-up.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
import urllib.parse
from pathlib import Path
from typing import Any, Literal

import yaml

from core.remote import scrub
from pipeline.config_values import coerce_value, parse_override
from pipeline.errors import ConfigError


def _field(default: Any, help: str) -> Any:
    """A dataclass field with a default and its help text (unit or meaning)."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(
            default_factory=lambda: type(default)(default), metadata={"help": help}
        )
    return dataclasses.field(default=default, metadata={"help": help})


Backend = Literal["folder", "wds", "dali"]
DaliDecode = Literal["auto", "mixed", "cpu"]
WorkerKind = Literal["auto", "threads", "processes"]
Freeze = Literal["none", "features"]
OptimizerName = Literal["sgd", "adam", "adamw", "rmsprop"]
ScheduleName = Literal["step", "cosine", "plateau", "constant", "linear", "onecycle"]
AutoAugment = Literal["none", "trivial", "imagenet"]
BestMetric = Literal["val/top1", "val/ema_top1"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
DeviceName = Literal["auto", "cuda", "cpu"]
WandbMode = Literal["auto", "online", "offline", "disabled"]
CommHookName = Literal["none", "fp16", "bf16", "powersgd"]


@dataclasses.dataclass(frozen=True)
class DataConfig:
    backend: Backend = _field(
        "wds", "loader: folder (ImageFolder), wds (WebDataset shards) or dali"
    )
    train_dir: str = _field(
        "",
        "train data: class folders (folder/dali) or a shard directory with manifest.json "
        "(wds/dali), local or a URL (s3://bucket/prefix/train, https://host/path/train, any "
        "fsspec protocol; credentials from the standard chain, never from here)",
    )
    val_dir: str = _field("", "val data, same forms as train_dir")
    cache_dir: str = _field(
        "",
        "shards from a URL: the node-local cache folder; empty = the temp dir "
        "(slurm/train.sbatch: $TMPDIR)",
    )
    cache_gb: float = _field(
        0.0,
        "shards from a URL: the cache's bound, GB (10^9 bytes), whole shards evicted least "
        "recently used; 0 streams each shard into the tar reader without the disk (wds only)",
    )
    prefetch_shards: int = _field(
        2, "shards from a URL with a cache: shards fetched ahead of the reader, per loader worker"
    )
    global_batch_size: int = _field(
        256, "images per optimizer step summed over all ranks (and accumulation steps)"
    )
    num_workers: int = _field(8, "loader workers per rank (DALI: threads), 0 decodes in the loop")
    roi_decode: bool = _field(True, "folder/wds: decode only the crop's window (ROI decoder)")
    worker_kind: WorkerKind = _field(
        "auto",
        "folder/wds workers: threads (no copy of the batch), DataLoader processes, or auto "
        "(threads with the ROI decoder, no auto_augment and <= 6 workers, else processes)",
    )
    train_crop: int = _field(224, "train RandomResizedCrop output size, pixels")
    val_resize: int = _field(
        256, "val: short side is resized to this many pixels before the center crop"
    )
    val_crop: int = _field(224, "val center-crop size, pixels")
    scale_min: float = _field(0.08, "RandomResizedCrop smallest area fraction")
    scale_max: float = _field(1.0, "RandomResizedCrop largest area fraction")
    ratio_min: float = _field(3 / 4, "RandomResizedCrop smallest aspect ratio (w/h)")
    ratio_max: float = _field(4 / 3, "RandomResizedCrop largest aspect ratio (w/h)")
    flip_prob: float = _field(0.5, "train horizontal-flip probability")
    shuffle_buffer: int = _field(
        2000, "wds: in-worker shuffle buffer, samples (shards are also globally pre-shuffled)"
    )
    prefetch_factor: int = _field(4, "batches each loader worker prepares ahead")
    pin_memory: bool = _field(True, "pin host batches for asynchronous copies to the GPU")
    record_samples: bool = _field(
        False, "debug: write the keys of every train batch to RUN_DIR/samples/rank-N-epoch-E.jsonl"
    )
    dali_decode: DaliDecode = _field(
        "auto", "dali: mixed (nvJPEG on GPU), cpu, or auto (mixed when CUDA is present)"
    )
    res_start: int = _field(
        0,
        "progressive resizing: the train crop of the first epochs, pixels, ramping up to "
        "data.train_crop; 0 trains at data.train_crop throughout",
    )
    res_ramp_start: int = _field(0, "progressive resizing: the last epoch at data.res_start")
    res_ramp_end: int = _field(
        0, "progressive resizing: the first epoch at data.train_crop (a linear ramp in between)"
    )
    res_step: int = _field(32, "progressive resizing: ramp sizes are multiples of this (FFCV: 32)")
    auto_augment: AutoAugment = _field(
        "none",
        "train: trivial (TrivialAugmentWide) or imagenet (AutoAugment's ImageNet policy) after "
        "the crop and flip, in every backend; none",
    )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    arch: str = _field(
        "alexnet",
        "alexnet (torchvision layout), alexnet_bn (BatchNorm after conv1/2), alexnet_lrn (2012 "
        "paper), or any name in torchvision.models.list_models(module=torchvision.models): "
        "resnet50, vgg16_bn, inception_v3, vit_b_16, ... (`python -m pipeline.models` lists them "
        "with their input sizes); fresh weights, nothing downloaded",
    )
    num_classes: int = _field(0, "output classes; 0 takes the count from the training data")
    dropout: float = _field(
        -1.0, "classifier dropout probability; -1 keeps the architecture's own (AlexNet: 0.5)"
    )
    width_mult: float = _field(
        1.0, "alexnet variants: conv channel multiplier (1.0 = the published widths)"
    )
    classifier_width: int = _field(
        4096, "alexnet variants: hidden units of the two classifier layers (4096 in AlexNet)"
    )
    kaiming_init: bool = _field(
        False, "alexnet variants: Kaiming-normal init for conv/linear weights (else PyTorch's)"
    )
    zero_init_residual: bool = _field(
        False, "resnet/resnext/wide_resnet: zero the last BatchNorm of each residual branch"
    )
    sync_bn: bool = _field(
        False, "BatchNorm statistics over the global batch (for small per-GPU batches)"
    )
    aux_loss_weight: float = _field(
        -1.0,
        "inception_v3/googlenet: weight of each auxiliary classifier's training loss; -1 is the "
        "paper's (0.4 Inception-v3, 0.3 GoogLeNet), 0 trains the main head only",
    )
    transform_input: bool = _field(
        False, "inception_v3/googlenet: re-normalize inputs as torchvision's ported weights expect"
    )
    blurpool: bool = _field(
        False, "a 3x3 blur before each strided conv with >= 16 input channels (FFCV's ResNets)"
    )
    init_from: str = _field(
        "", "local weights file (state_dict) to start from; nothing is downloaded"
    )
    finetune: str = _field(
        "", "checkpoint to fine-tune from: loads the model, replaces the head for num_classes"
    )
    freeze: Freeze = _field(
        "none",
        "with finetune: 'features' freezes the feature part (the family's `features` module, "
        "else all but the head)",
    )


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    name: OptimizerName = _field(
        "sgd", "sgd, adam, adamw or rmsprop (torchvision's: alpha 0.9, eps 0.0316)"
    )
    lr: float = _field(0.01, "learning rate per 256 images, scaled linearly with global_batch_size")
    momentum: float = _field(0.9, "SGD (and RMSprop) momentum")
    nesterov: bool = _field(False, "SGD Nesterov momentum")
    betas: list = _field([0.9, 0.999], "Adam/AdamW betas")
    weight_decay: float = _field(1e-4, "L2 / decoupled weight decay")
    no_decay_bias_norm: bool = _field(False, "exclude biases and norm parameters from weight decay")
    label_smoothing: float = _field(0.0, "cross-entropy label smoothing")
    grad_accum_steps: int = _field(
        1, "micro-batches per optimizer step; the global batch is split across them"
    )
    clip_grad_norm: float = _field(0.0, "clip the gradient norm to this value; 0 disables")
    rmsprop_alpha: float = _field(0.9, "rmsprop: smoothing constant (torchvision's and TF's 0.9)")
    rmsprop_eps: float = _field(
        0.0316, "rmsprop: epsilon (torchvision's 0.0316; Inception-v3's paper 1.0)"
    )


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    name: ScheduleName = _field(
        "step",
        "step (÷gamma every step_epochs), cosine, plateau (ReduceLROnPlateau on val top-1), "
        "constant, linear (FFCV: up to peak_epoch, then down to 0) or onecycle (cosine up, then "
        "down)",
    )
    step_epochs: int = _field(30, "step: epochs between decays")
    gamma: float = _field(0.1, "step/plateau: decay factor")
    warmup_epochs: float = _field(
        0.0, "linear warmup from 0 over this many epochs (fractions allowed)"
    )
    min_lr: float = _field(0.0, "cosine: final learning rate")
    peak_epoch: float = _field(
        2.0, "linear: epoch of the peak lr (FFCV: 2); linear up from start_factor x lr, then to 0"
    )
    start_factor: float = _field(1e-4, "linear: the lr at step 0 as a fraction of the peak (FFCV)")
    onecycle_pct: float = _field(0.25, "onecycle: fraction of the steps spent rising to the peak")
    onecycle_div: float = _field(25.0, "onecycle: the first lr is the peak divided by this")
    onecycle_final_div: float = _field(
        1e4, "onecycle: the last lr is the first divided by this (torch's OneCycleLR)"
    )
    plateau_patience: int = _field(
        5, "plateau: evaluations without val top-1 improvement before decaying"
    )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = _field(90, "training epochs")
    seed: int = _field(0, "seed for init, shuffling and augmentation")
    precision: Precision = _field(
        "auto", "auto (bf16 where supported, else fp32 on CPU), bf16, fp16 (GradScaler) or fp32"
    )
    channels_last: bool = _field(
        True, "NHWC memory format for images and model (faster convs on tensor cores)"
    )
    compile: bool = _field(False, "torch.compile the model")
    ema_decay: float = _field(
        0.0,
        "weight EMA decay per optimizer step, evaluated beside the raw weights as val/ema_*; "
        "0 disables",
    )
    ema_warmup_steps: int = _field(
        0, "the EMA copies the weights for this many optimizer steps before averaging"
    )
    device: DeviceName = _field("auto", "auto (CUDA when available), cuda or cpu")
    run_dir: str = _field(
        "runs/alexnet", "checkpoints, metrics, config and plots go here; a rerun resumes from it"
    )
    eval_every: int = _field(1, "evaluate every N epochs (and always after the last)")
    save_every: int = _field(
        10, "also keep a checkpoint every N epochs (0: never); last and best are always kept"
    )
    early_stop_patience: int = _field(
        0, "stop after N evaluations without val top-1 improvement; 0 disables"
    )
    max_steps: int = _field(0, "stop after this many optimizer steps in total; 0 runs all epochs")
    log_every: int = _field(50, "log train metrics every N optimizer steps")
    sanity_grid: bool = _field(True, "write a labelled grid of an augmented train batch at start")
    check_overfit_steps: int = _field(
        300, "--check: optimizer steps allowed to reach 100% train accuracy on one batch"
    )
    check_loss_tolerance: float = _field(
        0.25,
        "--check: warn when the initial loss differs from ln(classes) by more than this fraction",
    )
    comm_hook: CommHookName = _field(
        "none",
        "DDP gradient all-reduce: none (fp32), fp16 or bf16 (half the bytes), powersgd (low-rank, "
        "error feedback); see docs/comm.md for which to pick",
    )
    powersgd_rank: int = _field(
        4, "powersgd: rank of each compressed gradient matrix's approximation (1-4 typical)"
    )
    powersgd_warmup_steps: int = _field(
        1000, "powersgd: optimizer steps of plain all-reduce before compression starts (>= 2)"
    )
    powersgd_min_elements: int = _field(
        1_000_000,
        "powersgd: gradients with fewer elements are all-reduced uncompressed (1M compresses "
        "AlexNet's three FC weights only)",
    )
    bucket_cap_mb: float = _field(
        25.0, "DDP gradient bucket size, MB: smaller starts the all-reduce earlier in backward"
    )
    static_graph: bool = _field(
        False, "DDP static_graph: every step uses the same parameters, so DDP can skip checks"
    )
    collective_timeout_s: float = _field(1800.0, "process-group timeout, s (nccl and gloo)")
    stall_timeout_s: float = _field(
        900.0, "watchdog: s without progress before a rank is named and the run exits 75; 0 off"
    )
    keep_last: int = _field(2, "checkpoints kept: last.pt + previous ones (checkpoints/previous/)")
    save_every_minutes: float = _field(0.0, "also write last.pt mid-epoch this often, min; 0 off")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Batch-level augmentation, on the device after the loader: the same for every backend."""

    mixup_alpha: float = _field(0.0, "mixup: Beta(alpha, alpha) mixing weight; 0 disables")
    cutmix_alpha: float = _field(0.0, "cutmix: Beta(alpha, alpha) box area; 0 disables")
    mix_prob: float = _field(1.0, "probability that a batch is mixed at all (mixup or cutmix)")
    switch_prob: float = _field(
        0.5, "with both alphas set: probability of cutmix instead of mixup for a batch"
    )
    random_erase: float = _field(
        0.0, "random erasing: probability per image (torchvision's scale 0.02-0.33, value 0)"
    )


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    flip_tta: bool = _field(
        False,
        "average each val image's logits with its mirror's; val/* are then the averaged "
        "scores and val/single_* the single-view ones",
    )
    best_metric: BestMetric = _field(
        "val/top1", "the score best.pt and early stopping follow: val/top1 or val/ema_top1"
    )


@dataclasses.dataclass(frozen=True)
class LogConfig:
    wandb: WandbMode = _field(
        "auto", "auto (online with WANDB_API_KEY, else offline), online, offline or disabled"
    )
    project: str = _field("imagenet-alexnet", "W&B project, and the MLflow experiment's name")
    entity: str = _field("", "W&B entity (team); empty uses the key's default")
    run_name: str = _field("", "W&B and MLflow run name; empty uses the run dir's name")
    plots: bool = _field(True, "write curves and prediction-grid PNGs at the end")
    tensorboard: bool = _field(
        False, "write TensorBoard event files to RUN_DIR/tensorboard/ (rank 0; a resume continues)"
    )
    mlflow: str = _field(
        "",
        "MLflow tracking URI (http://host:5000, sqlite:///mlflow.db, or a local folder); empty: "
        "off. Credentials come from MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN, never the URI",
    )


@dataclasses.dataclass(frozen=True)
class Config:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    log: LogConfig = dataclasses.field(default_factory=LogConfig)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "train": TrainConfig,
    "augment": AugmentConfig,
    "eval": EvalConfig,
    "log": LogConfig,
}


def _section_hints(section_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(section_cls, globalns=vars(sys.modules[__name__]))


def build_config(values: dict[str, dict[str, Any]] | None = None) -> Config:
    """A Config from nested {section: {key: value}}; unknown keys and bad types raise
    ConfigError."""
    values = values or {}
    if not isinstance(values, dict):
        raise ConfigError(f"config must be a mapping of sections, got {type(values).__name__}")
    sections = {}
    for name, value in values.items():
        if name not in SECTIONS:
            raise ConfigError(
                f"unknown config section {name!r}: expected one of {', '.join(SECTIONS)}"
            )
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"config section {name!r} must be a mapping, got {value!r}")
    for name, section_cls in SECTIONS.items():
        given = values.get(name) or {}
        hints = _section_hints(section_cls)
        kwargs = {}
        for key, value in given.items():
            if key not in hints:
                raise ConfigError(
                    f"unknown config key {name}.{key}: expected one of {', '.join(hints)}"
                )
            kwargs[key] = coerce_value(value, hints[key], f"{name}.{key}")
        sections[name] = section_cls(**kwargs)
    config = Config(**sections)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Cross-field checks that need no data or world size, section by section."""
    validate_schedules(config)
    validate_data(config.data)
    validate_train(config.train)
    validate_optim(config.optim)
    validate_mlflow_uri(config.log.mlflow)
    if config.model.freeze != "none" and not config.model.finetune:
        raise ConfigError(
            "model.freeze needs model.finetune=PATH: freezing only applies when fine-tuning"
        )
    validate_ddp(config)


def validate_data(data: DataConfig) -> None:
    """Sizes, crop ranges and worker counts a loader can honour."""
    for name in ("global_batch_size", "train_crop", "val_resize", "val_crop"):
        if getattr(data, name) < 1:
            raise ConfigError(f"data.{name} must be positive, got {getattr(data, name)}")
    if data.val_crop > data.val_resize:
        raise ConfigError(
            f"data.val_crop {data.val_crop} is larger than data.val_resize {data.val_resize}"
        )
    if not 0 < data.scale_min <= data.scale_max <= 1:
        raise ConfigError(
            f"data.scale_min/scale_max must satisfy 0 < min <= max <= 1, got {data.scale_min}, "
            f"{data.scale_max}"
        )
    if not 0 < data.ratio_min <= data.ratio_max:
        raise ConfigError(
            f"data.ratio_min/ratio_max must satisfy 0 < min <= max, got {data.ratio_min}, "
            f"{data.ratio_max}"
        )
    if data.num_workers < 0:
        raise ConfigError(f"data.num_workers must be >= 0, got {data.num_workers}")
    if data.cache_gb < 0:
        raise ConfigError(f"data.cache_gb must be >= 0 (0 streams), got {data.cache_gb}")
    if data.prefetch_shards < 1:
        raise ConfigError(f"data.prefetch_shards must be >= 1, got {data.prefetch_shards}")


def validate_train(train: TrainConfig) -> None:
    """The loop's counts and intervals, the --check lengths and the seed."""
    for name in ("eval_every", "log_every"):
        if getattr(train, name) < 1:
            raise ConfigError(f"train.{name} must be >= 1, got {getattr(train, name)}")
    for name in ("save_every", "max_steps", "early_stop_patience", "stall_timeout_s"):
        if getattr(train, name) < 0:
            raise ConfigError(f"train.{name} must be >= 0 (0 disables), got {getattr(train, name)}")
    if train.check_overfit_steps < 1 or train.check_loss_tolerance <= 0:
        raise ConfigError(
            "train.check_overfit_steps must be >= 1 and train.check_loss_tolerance > 0"
        )
    if train.seed < 0:
        raise ConfigError(
            f"train.seed must be >= 0 (numpy seeds are non-negative), got {train.seed}"
        )
    if train.epochs < 1:
        raise ConfigError(f"train.epochs must be >= 1, got {train.epochs}")
    if train.keep_last < 1 or train.collective_timeout_s <= 0 or train.save_every_minutes < 0:
        raise ConfigError("train.keep_last must be >= 1, collective_timeout_s > 0, minutes >= 0")


def validate_optim(optim: OptimConfig) -> None:
    if optim.grad_accum_steps < 1:
        raise ConfigError(f"optim.grad_accum_steps must be >= 1, got {optim.grad_accum_steps}")
    if optim.lr <= 0:
        raise ConfigError(f"optim.lr must be positive, got {optim.lr}")
    if not 0.0 <= optim.label_smoothing < 1.0:  # at load: before a run dir is written
        raise ConfigError(f"optim.label_smoothing must be in [0, 1), got {optim.label_smoothing}")


def validate_ddp(config: Config) -> None:
    """DDP's gradient hook and buckets, and what torch's DDP cannot combine."""
    train = config.train
    if train.powersgd_rank < 1 or train.powersgd_min_elements < 0:
        raise ConfigError(
            f"train.powersgd_rank must be >= 1 and train.powersgd_min_elements >= 0, got "
            f"{train.powersgd_rank} and {train.powersgd_min_elements}"
        )
    if train.powersgd_warmup_steps < 2:
        # torch: DDP rebuilds its buckets after step 1, which error feedback must not straddle
        raise ConfigError(
            f"train.powersgd_warmup_steps must be >= 2 (DDP re-plans its buckets after the "
            f"first step), got {train.powersgd_warmup_steps}"
        )
    if train.bucket_cap_mb <= 0:
        raise ConfigError(f"train.bucket_cap_mb must be positive, got {train.bucket_cap_mb}")
    if train.static_graph and config.optim.grad_accum_steps > 1:
        # torch 2.13: DDP's static graph under no_sync() asserts, and once past that stops
        # all-reducing (pytorch/pytorch#143580, fix pending in #187732)
        raise ConfigError(
            f"train.static_graph=true with optim.grad_accum_steps={config.optim.grad_accum_steps}:"
            " DDP's static graph breaks under gradient accumulation (pytorch/pytorch#143580); "
            "turn one of them off"
        )


def validate_mlflow_uri(uri: str) -> None:
    """log.mlflow must not carry credentials: the resolved config is saved with the run, logged
    as MLflow params and copied into checkpoints."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.username or parsed.password or "token=" in parsed.query.lower():
        raise ConfigError(
            "log.mlflow holds credentials, which would be saved in config.yaml and the "
            "checkpoints: pass the URI without them and export MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) instead"
        )


def validate_schedules(config: Config) -> None:
    """What varies over training must be possible: a ramp inside train.epochs, probabilities in
    [0, 1], an EMA decay below 1, a best metric that exists."""
    data, train, augment = config.data, config.train, config.augment
    if data.res_start:
        if not 0 < data.res_start <= data.train_crop:
            raise ConfigError(
                f"data.res_start={data.res_start} must be between 1 and data.train_crop="
                f"{data.train_crop} (the ramp ends at the train crop)"
            )
        if not 0 <= data.res_ramp_start <= data.res_ramp_end <= train.epochs:
            raise ConfigError(
                f"the resolution ramp from epoch {data.res_ramp_start} to {data.res_ramp_end} "
                f"does not fit train.epochs={train.epochs}: need 0 <= data.res_ramp_start <= "
                "data.res_ramp_end <= train.epochs"
            )
        if data.res_step < 1:
            raise ConfigError(f"data.res_step must be >= 1, got {data.res_step}")
    for name in ("mixup_alpha", "cutmix_alpha"):
        if getattr(augment, name) < 0:
            raise ConfigError(f"augment.{name} must be >= 0 (0 disables)")
    for name in ("mix_prob", "switch_prob", "random_erase"):
        if not 0.0 <= getattr(augment, name) <= 1.0:
            raise ConfigError(f"augment.{name} is a probability: got {getattr(augment, name)}")
    if not 0.0 <= train.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay must be in [0, 1), got {train.ema_decay}")
    if train.ema_warmup_steps < 0:
        raise ConfigError(f"train.ema_warmup_steps must be >= 0, got {train.ema_warmup_steps}")
    if config.eval.best_metric == "val/ema_top1" and not train.ema_decay:
        raise ConfigError("eval.best_metric=val/ema_top1 needs train.ema_decay > 0")
    schedule = config.schedule
    if schedule.name == "linear" and not 0 <= schedule.peak_epoch < train.epochs:
        raise ConfigError(
            f"schedule.peak_epoch={schedule.peak_epoch} must be in [0, train.epochs={train.epochs})"
        )
    if schedule.name == "onecycle" and not 0 < schedule.onecycle_pct < 1:
        raise ConfigError(f"schedule.onecycle_pct must be in (0, 1), got {schedule.onecycle_pct}")


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Read a YAML file (optional), apply `section.key=value` overrides, validate."""
    values: dict[str, dict[str, Any]] = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"config file {path} does not exist: pass --config configs/alexnet.yaml or another "
                "YAML file"
            )
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}")
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {path} must hold a mapping of sections, got {type(loaded).__name__}"
            )
        for section, body in loaded.items():
            if body is not None and not isinstance(body, dict):
                raise ConfigError(f"{path}: section {section!r} must be a mapping")
            values[section] = dict(body or {})
    for text in overrides:
        section, key, value = parse_override(text)
        values.setdefault(section, {})[key] = value
    return build_config(values)


def config_to_dict(config: Config) -> dict[str, dict[str, Any]]:
    """The config as recorded (config.yaml, checkpoints, W&B, doctor.json): every URL without
    its userinfo and query string, where credentials and signed tokens would hide."""
    return {
        section: {
            key: scrub(value) if isinstance(value, str) else value for key, value in values.items()
        }
        for section, values in dataclasses.asdict(config).items()
    }


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def replace(config: Config, section: str, **changes: Any) -> Config:
    """A new Config with some keys of one section changed (the original is untouched)."""
    values = dataclasses.asdict(config)  # not config_to_dict: a URL keeps what it needs
    values[section].update(changes)
    return build_config(values)
