"""Connecting to Ray the same way from every entry point."""

from __future__ import annotations

import os
from typing import Any

# Workers must bind tf.keras to tf_keras before anything imports TensorFlow; Ray sets this
# itself inside workers, but too late. Shipping it in the runtime env makes it reach every process.
WORKER_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def init_ray(address: str | None = None, **kwargs: Any) -> None:
    """Attach to ``address`` (or $RAY_ADDRESS, or start a local instance) with our worker env."""
    import ray

    if ray.is_initialized():
        return
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)
    runtime_env = kwargs.pop("runtime_env", None) or {}
    env_vars = {**WORKER_ENV, **runtime_env.get("env_vars", {})}
    kwargs.setdefault("log_to_driver", True)
    ray.init(address=address, runtime_env={**runtime_env, "env_vars": env_vars}, **kwargs)
