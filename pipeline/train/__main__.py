"""`python -m pipeline.train`: see pipeline/train/cli.py."""

import sys

from pipeline.train.cli import main

sys.exit(main())
