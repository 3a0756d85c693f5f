"""The preprocessing CLI: raw ImageNet → class folders → 256 px JPEGs → WebDataset shards.

    python -m preprocess sort-val VAL_DIR --labels LOC_val_solution.csv
    python -m preprocess resize SRC DST --short-side 256
    python -m preprocess shard SRC DST --split train
    python -m preprocess prepare RAW DST
    python -m preprocess prepare cifar-10-python.tar.gz DST      # also CIFAR-100, MNIST family
    python -m preprocess prepare RAW DST --classes 100 --random-classes   # subsets
    python -m preprocess prepare RAW s3://bucket/imagenet                 # staged, uploaded
    python -m preprocess verify DIR
    python -m preprocess verify s3://bucket/imagenet
    python -m preprocess grid DIR -o grid.png
    python -m preprocess merge DIR
    python -m preprocess upload STAGING s3://bucket/imagenet

Each subcommand lives in its own module as `add_arguments(parser)` and `run(args) -> int`;
this file only dispatches. Errors a user can cause (`UserError`) print one line and exit 2
(EXIT_USAGE); Ctrl-C exits 130 (EXIT_INTERRUPTED), keeping every finished output.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from core.errors import EXIT_INTERRUPTED, EXIT_USAGE, UserError
from core.logs import configure_logging

# subcommand -> (module, one-line help). No module here imports torch, so the CLI starts fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "sort-val": (
        "preprocess.sortval",
        "move or hard-link the flat val images into nXXXXXXXX/ class folders",
    ),
    "resize": (
        "preprocess.resize",
        "every image → RGB JPEG with the given short side (resumable, parallel)",
    ),
    "shard": (
        "preprocess.shards",
        "class folders → shuffled WebDataset tars + manifest + DALI index",
    ),
    "prepare": (
        "preprocess.prepare",
        "ImageNet (tars, Kaggle, folders), CIFAR or MNIST-family files → shards, or a subset",
    ),
    "verify": ("preprocess.verify", "check folders or shards against their manifest"),
    "grid": ("preprocess.grid", "a labelled sample grid PNG, the sanity check before training"),
    "merge": ("preprocess.merge", "merge the per-task manifests of a Slurm array run"),
    "upload": ("preprocess.upload", "upload a staged `prepare` output to s3://..., verified"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m preprocess", description=__doc__.split("\n")[0]
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        module.add_arguments(command_parser)
        command_parser.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(
        logging.DEBUG if args.verbose else logging.INFO,
        "%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.run(args) or 0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(
            "interrupted: finished outputs are kept; rerun the same command to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
