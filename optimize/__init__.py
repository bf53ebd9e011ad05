"""``python -m optimize``: a registered version -> optimised, exported variants, each registered."""
