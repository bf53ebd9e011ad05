"""Training entry point: ``python -m train --config configs/train/digits_mlp.yaml``."""
