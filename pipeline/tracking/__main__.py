"""`python -m pipeline.tracking`: see pipeline/tracking/cli.py."""

import sys

from pipeline.tracking.cli import main

sys.exit(main())
