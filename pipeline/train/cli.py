"""Train, evaluate or sanity-check AlexNet (or any torchvision classification model) with DDP
and AMP.

    python -m pipeline.train --config configs/alexnet.yaml \
        data.train_dir=DST/train data.val_dir=DST/val
    torchrun --nproc_per_node=8 -m pipeline.train --config configs/alexnet.yaml  # one node, 8 GPUs
    python -m pipeline.train --config configs/alexnet.yaml --evaluate  # latest checkpoint
    python -m pipeline.train --config configs/alexnet.yaml --evaluate --init-from alexnet-owt.pth
    python -m pipeline.train --config configs/resnet50.yaml --evaluate --eval-sizes 232/224 256/224
    python -m pipeline.train --config configs/tiny.yaml --check  # ln(C) + overfit one batch
    python -m pipeline.train --config configs/alexnet.yaml --finetune best.pt --freeze features

Any `section.key=value` after the flags overrides the YAML (see pipeline/config.py).

Resuming: a rerun with the same train.run_dir continues from RUN_DIR/checkpoints/last.pt with no
flag; `--resume PATH` picks another checkpoint. The checkpoint records the optimizer step and
the batch inside the epoch, and the learning rate and dropout masks are functions of the step
(the torch generator is reseeded from (seed, rank, step) before every optimizer step, so nothing
the loaders draw in between can shift it): a resumed run takes exactly the steps an
uninterrupted one would have taken and ends with the same step count.

Stopping: SIGTERM, SIGUSR1 or SIGUSR2 set a flag. After the current optimizer step every rank
learns of it (a one-element MAX all-reduce per step, on a CPU gloo group when training on
nccl so it never waits for the GPU), rank 0 writes last.pt, which resumes at the next batch, and
every rank exits with code 75 (EX_TEMPFAIL). torchrun forwards only TERM/INT/HUP/QUIT to its
workers and SIGKILLs them 30 s after TERM; a signal save writes last.pt only (AlexNet + SGD
momentum is about 0.5 GB: seconds on local disk), so keep train.run_dir on a file system that
can take that in well under 30 s. A signal after an epoch's last step or during its eval cuts
the eval short and saves the point before it (batch_in_epoch = the whole epoch): the resumed run
does that eval, best.pt and epoch_NNN.pt first. Ctrl-C (SIGINT) aborts without saving.
Rank 0 picks the checkpoint to resume from and broadcasts it; every rank must be able to read it.

Exit codes: 0 done, 1 `--check` failed, 2 bad config, paths or checkpoint (one line on
stderr), 75 stopped by a signal after writing a resumable checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.checks import run_check_command
from pipeline.config import load_config
from pipeline.distributed import barrier, init_distributed, shutdown
from pipeline.errors import EXIT_USAGE, UserError, first_line
from pipeline.evaluate import evaluate_checkpoint, parse_eval_sizes
from pipeline.logging_setup import setup_logging
from pipeline.train.trainer import Trainer


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="YAML config (configs/alexnet.yaml, configs/alexnet_paper.yaml, configs/tiny.yaml)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--evaluate",
        action="store_true",
        help=(
            "only evaluate: --resume PATH, else RUN_DIR/checkpoints/last.pt, else --init-from "
            "weights"
        ),
    )
    mode.add_argument(
        "--check",
        action="store_true",
        help="sanity checks: initial loss vs ln(C) and overfitting one batch",
    )
    parser.add_argument(
        "--resume",
        type=Path,
        help="resume from this checkpoint instead of RUN_DIR/checkpoints/last.pt",
    )
    parser.add_argument(
        "--init-from",
        help="shortcut for model.init_from=PATH (a local state_dict, e.g. torchvision's)",
    )
    parser.add_argument(
        "--eval-sizes",
        nargs="+",
        default=[],
        metavar="RESIZE/CROP",
        help="with --evaluate: score at each val short side / center crop (e.g. 232/224 "
        "256/224 288/256), one line each",
    )
    parser.add_argument("--finetune", help="shortcut for model.finetune=PATH")
    parser.add_argument("--freeze", choices=["none", "features"], help="shortcut for model.freeze")
    parser.add_argument(
        "overrides", nargs="*", metavar="section.key=value", help="config overrides"
    )
    # intermixed: overrides may come before, between or after the flags (`--resume PATH a.b=1`)
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.train` / `imagenet-train`; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    overrides = list(args.overrides)
    # `--eval-sizes 232/224 256/224 eval.flip_tta=true`: the option's list swallows what follows
    # it; a section.key=value among its items is an override
    overrides += [item for item in args.eval_sizes if "=" in item]
    eval_sizes = [item for item in args.eval_sizes if "=" not in item]
    for flag, key in (
        (args.init_from, "model.init_from"),
        (args.finetune, "model.finetune"),
        (args.freeze, "model.freeze"),
    ):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    try:
        cfg = load_config(args.config, overrides)
    except UserError as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    if eval_sizes and not args.evaluate:
        print("error: --eval-sizes scores a checkpoint: add --evaluate", file=sys.stderr)
        return EXIT_USAGE
    if args.resume is not None and not args.resume.is_file():
        print(
            f"error: --resume {args.resume} does not exist: pass a checkpoint file "
            "(RUN_DIR/checkpoints/last.pt)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        dist = init_distributed(cfg.train.device, timeout_s=cfg.train.collective_timeout_s)
    except (UserError, RuntimeError) as err:  # RuntimeError: the rendezvous itself failed
        print(f"error: {first_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(dist)
    try:
        if args.check:
            code = run_check_command(cfg, dist)
        elif args.evaluate:
            code = evaluate_checkpoint(cfg, dist, args.resume, parse_eval_sizes(eval_sizes))
        else:
            code = Trainer(cfg, dist, argv, args.resume).train()
        # Every rank got here (the run ended, or all agreed to stop): tear the process group down
        # together. A rank that destroyed its gloo group and exited while rank 0 was still writing
        # plots was seen once to abort at exit ("terminate called without an active exception").
        barrier(dist)
        return code
    except UserError as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        shutdown(dist)
