"""What a serving replica's worker process does before Ray Serve loads into it: keep pandas and
pyarrow, which Serve would import but no route of ours needs, out of the process.

- Ray Serve's helpers (``ray.serve._private.utils``) import pandas only to encode a DataFrame a
  deployment might return, and pandas pulls in pyarrow. We let Serve import its helpers as on a
  machine without pandas (its own ``try: import pandas / except ImportError``), then lift the
  block at once: a later ``import pandas`` in the replica loads it as usual.
- Ray registers its Arrow serializers (for Ray Data's blocks) in every serialization context it
  makes, and Serve makes one per ``@serve.deployment``: each imports pyarrow if it is installed.
  We make that registration happen only where pyarrow is already loaded. A replica never passes
  Arrow data through Ray; if it did, Ray would pickle it the ordinary way.

Measured with ``bench/serve_runtimes.py`` (the Ingress replica's VmRSS under load): an ONNX Runtime
replica drops from ~255 to ~180 MiB. A TensorFlow replica keeps both (TensorFlow imports them).
The registry, key store and audit log read local files without pyarrow (``maas.localfs``); the
capture writer imports pyarrow when capture is switched on.

It runs as Ray's worker-process setup hook, which the Serve configs name for the application's
workers (``runtime_env.env_vars``; Ray's ``worker_process_setup_hook`` field is honoured only by
``ray.init``, which sets the same variable): Ray calls it in each new worker before the worker
runs any task or actor, so before the replica's class, and with it Serve, is loaded. Nothing here
can fail a worker: whatever does not apply (another Ray version, pandas already loaded) is left.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

# The variable Ray's default worker reads at start (ray._private.ray_constants
# WORKER_PROCESS_SETUP_HOOK_ENV_VAR), and the value naming this hook.
SETUP_HOOK_ENV_VAR = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"
SETUP_HOOK = "maas.serving.replica_setup.keep_serve_lean"

SERVE_HELPERS = "ray.serve._private.utils"
ARROW_SERIALIZATION = "ray._private.arrow_serialization"
ARROW_REGISTRATION = "_register_custom_datasets_serializers"


def keep_serve_lean() -> None:
    register_arrow_serializers_only_once_loaded()
    import_serve_without_pandas()


def import_serve_without_pandas() -> None:
    """Import Serve's helpers with pandas hidden, then unhide it. If anything on that import
    path needs pandas after all, it is imported the ordinary way."""
    if SERVE_HELPERS in sys.modules or "pandas" in sys.modules:
        return  # too late to matter, or pandas is wanted here anyway
    sys.modules["pandas"] = None  # type: ignore[assignment]  # `import pandas` -> ImportError
    try:
        importlib.import_module(SERVE_HELPERS)
    except ImportError:
        for name in [name for name in sys.modules if name.startswith("ray.serve")]:
            del sys.modules[name]  # half-imported under the block: import again without it
    finally:
        del sys.modules["pandas"]
    importlib.import_module(SERVE_HELPERS)


def register_arrow_serializers_only_once_loaded() -> None:
    """Wrap Ray's Arrow serializer registration so that it does not import pyarrow itself."""
    try:
        module = importlib.import_module(ARROW_SERIALIZATION)
        register = getattr(module, ARROW_REGISTRATION)
    except (ImportError, AttributeError):
        return  # another Ray: it keeps its own behaviour
    if getattr(register, "maas_wrapped", False):
        return

    def register_if_arrow_loaded(serialization_context: Any) -> None:
        if "pyarrow" in sys.modules:
            register(serialization_context)

    register_if_arrow_loaded.maas_wrapped = True  # type: ignore[attr-defined]
    setattr(module, ARROW_REGISTRATION, register_if_arrow_loaded)
