"""Ray Train's TensorFlow backend (``TF_CONFIG`` on every worker), without importing TensorFlow
where Train's controller runs.

Ray's own ``TensorflowConfig`` lives in ``ray.train.tensorflow``, whose ``__init__`` imports
TensorFlow. Train V2's controller unpickles the backend config, so it imported TensorFlow (a few
seconds of CPU, in series before any worker starts) only to tell each worker its place in the
cluster. This module does what ``ray/train/tensorflow/config.py`` (``_TensorflowBackend``) does,
from a module that imports no TensorFlow; the workers import it themselves in the training loop.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from ray.train.backend import Backend, BackendConfig


def _worker_address() -> str:
    """This worker's host:port for MultiWorkerMirroredStrategy's gRPC server (a free port)."""
    from ray._common.network_utils import build_address
    from ray.train._internal.utils import get_address_and_port

    address, port = get_address_and_port()
    return build_address(address, port)


def set_tf_config(worker_addresses: list[str], index: int) -> None:
    """Run on each worker: the cluster spec MultiWorkerMirroredStrategy reads from TF_CONFIG."""
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": worker_addresses},
        "task": {"type": "worker", "index": index},
    })
    os.environ["TF_USE_LEGACY_KERAS"] = "1"


class _KerasBackend(Backend):
    def on_start(self, worker_group: Any, backend_config: BackendConfig) -> None:
        import ray

        addresses = worker_group.execute(_worker_address)
        ray.get([worker_group.execute_single_async(index, set_tf_config,
                                                   worker_addresses=addresses, index=index)
                 for index in range(len(worker_group))])


@dataclass
class KerasBackendConfig(BackendConfig):
    """Pass as ``backend_config`` to Train's ``DataParallelTrainer``."""

    @property
    def backend_cls(self) -> type[Backend]:
        return _KerasBackend

    @property
    def framework(self) -> Any:  # shown as "tensorflow" in Train's state and dashboard
        from ray.train.v2._internal.util import TrainingFramework

        return TrainingFramework.TENSORFLOW
