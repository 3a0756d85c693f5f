"""`python -m launch ...` = `imagenet-launch ...`: see launch/torchrun.py."""

import sys

from launch.torchrun import main

sys.exit(main())
