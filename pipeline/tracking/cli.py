"""Plots and history of a finished (or running) run, from its run dir.

python -m pipeline.tracking plots RUN_DIR     # curves (and prediction grid) from a run dir
python -m pipeline.tracking history RUN_DIR   # print the logged rows of the W&B offline run
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from core.logs import configure_logging
from pipeline import checkpoint as ckpt
from pipeline.config import load_config
from pipeline.data import build_loader
from pipeline.distributed import DistInfo
from pipeline.errors import EXIT_OK, EXIT_USAGE
from pipeline.evaluate import FirstBatches, evaluate
from pipeline.models import build_model
from pipeline.precision import build_precision
from pipeline.tracking.history import METRICS_FILE, read_wandb_history
from pipeline.tracking.plots import plot_curves, save_prediction_grid

logger = logging.getLogger(__name__)


def render_predictions_from_run(run_dir: str | Path) -> Path | None:
    """The prediction grid of best.pt (or last.pt) on the first val batch, on the CPU."""
    run_dir = Path(run_dir)
    checkpoints = (run_dir / "checkpoints/best.pt", run_dir / "checkpoints/last.pt")
    source = next((path for path in checkpoints if path.is_file()), None)
    if source is None or not (run_dir / "config.yaml").is_file():
        logger.warning("no checkpoint or config.yaml in %s: skipping the prediction grid", run_dir)
        return None
    # on the CPU, whatever the run used: a GPU run's dali_decode=mixed would need a GPU too
    on_cpu = ["data.num_workers=0", "train.device=cpu", "data.dali_decode=cpu"]
    cfg = load_config(run_dir / "config.yaml", on_cpu)
    dist = DistInfo()
    val_loader = build_loader(cfg, "val", dist)
    torch.manual_seed(cfg.train.seed)
    num_classes = cfg.model.num_classes or len(val_loader.classes)
    model = build_model(cfg.model, num_classes, image_size=cfg.data.train_crop)
    model.load_state_dict(ckpt.load_checkpoint(source)["model"])
    autocast = build_precision(cfg.train.precision, dist.torch_device).autocast
    output = evaluate(model, FirstBatches(val_loader, 1), model.head.out_features, dist, autocast)
    images, labels, predictions = output.examples
    names = [val_loader.class_names.get(wnid, wnid) for wnid in val_loader.classes]
    return save_prediction_grid(
        images, labels, predictions, names, run_dir / "plots" / "predictions.png"
    )


def main(argv: list[str] | None = None) -> int:

    parser = argparse.ArgumentParser(
        prog="python -m pipeline.tracking", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    plots = commands.add_parser(
        "plots",
        help=(
            "write RUN_DIR/plots/*.png from metrics.jsonl (+ prediction grid from the best "
            "checkpoint)"
        ),
    )
    plots.add_argument("run_dir", type=Path)
    plots.add_argument(
        "--no-predictions",
        action="store_true",
        help="curves only; skip loading the model and val data",
    )
    history = commands.add_parser(
        "history", help="print the history rows of the W&B offline runs in RUN_DIR/wandb"
    )
    history.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    if not args.run_dir.is_dir():
        print(f"error: run dir {args.run_dir} does not exist", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "history":
        for row in read_wandb_history(args.run_dir):
            print(json.dumps(row))
        return EXIT_OK
    configure_logging(logging.INFO, "%(message)s", None)
    written = plot_curves(args.run_dir)
    if not written:
        print(
            f"error: {args.run_dir / METRICS_FILE} is missing or empty: is this a run dir?",
            file=sys.stderr,
        )
        return EXIT_USAGE
    for path in written:
        print(path)
    if not args.no_predictions:
        path = render_predictions_from_run(args.run_dir)
        if path is not None:
            print(path)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
