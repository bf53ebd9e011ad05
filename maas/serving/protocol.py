"""The two wire protocols every model is served over."""

from __future__ import annotations

from typing import Literal

# v1: TensorFlow Serving REST (/v1/models/...); v2: the Open Inference Protocol (/v2/models/...).
ApiProtocol = Literal["v1", "v2"]
