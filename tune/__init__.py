"""Tuning entry point: ``python -m tune --config configs/tune/digits.yaml``."""
