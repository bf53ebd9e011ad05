"""Optimise entry point: ``python -m optimize --model digits_mlp --recipe configs/optimize/default.yaml``."""
import sys

from optimize.cli import main

sys.exit(main())
