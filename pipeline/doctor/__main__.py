"""`python -m pipeline.doctor`: see pipeline/doctor/cli.py."""

import sys

from pipeline.doctor.cli import main

sys.exit(main())
