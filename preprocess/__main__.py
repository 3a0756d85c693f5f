"""`python -m preprocess ...`: see preprocess/cli.py."""

import sys

from preprocess.cli import main

sys.exit(main())
