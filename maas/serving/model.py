"""One registered version, loaded and warmed on the runtime its artefact needs: a Keras model
called as one traced TensorFlow graph, or an ONNX model in an ONNX Runtime session (TensorFlow is
then never imported). The registry metadata's ``artifact.runtime`` decides (docs/optimize.md);
versions without it are Keras."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import numpy as np

from maas.data import DataSchema
from maas.errors import IntegrityError

Runtime = Literal["tensorflow", "onnxruntime"]
RUNTIMES: tuple[Runtime, ...] = ("tensorflow", "onnxruntime")


def artifact_runtime(metadata: dict[str, Any]) -> Runtime | None:
    """The runtime a version's artefact runs on; None for one that is not served (a TFLite file
    for edge clients) or that names a runtime this server does not have."""
    artifact = metadata.get("artifact") or {}
    if artifact.get("served") is False:
        return None
    runtime = artifact.get("runtime", "tensorflow")
    return runtime if runtime in RUNTIMES else None


def replica_cpus() -> int:
    """CPUs Ray assigned to this replica (an ONNX Runtime session's threads); 1 outside Ray."""
    try:
        import ray

        if ray.is_initialized():
            return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    except Exception:  # outside a Ray worker the context has nothing to say
        pass
    return 1


@dataclass
class LoadedModel:
    name: str
    version: int
    schema: DataSchema
    model: Any
    metadata: dict[str, Any]
    runtime: Runtime = "tensorflow"
    loaded_at: float = field(default_factory=time.time)

    @classmethod
    def from_registry(cls, root: str, name: str, version: int | str = "latest",
                      verifier: Any = None) -> LoadedModel:
        """Resolve; check the signature (with a ``verifier``) and the content hash before reading
        anything in the files; check the model's config against the allow-list; load; warm up."""
        from maas.artifacts.keras_loader import load_keras_bytes  # imports no TensorFlow itself
        from maas.registry import Registry

        registry = Registry(root)
        entry = registry.get(name, version)
        files = registry.read_verified(entry, verifier)
        what = f"model '{name}' version {entry.version}"
        if "encryption" in entry.metadata:  # decrypted here, in memory; never written to disk
            from maas.artifacts.encryption import MasterKey, decrypt_files

            files = decrypt_files(files, entry.metadata["encryption"], MasterKey.from_env(), what)
        runtime = artifact_runtime(entry.metadata)
        if runtime is None:
            raise IntegrityError(f"{what} is not servable here (artifact {entry.metadata.get('artifact')})")
        filename = (entry.metadata.get("artifact") or {}).get("file") or entry.metadata.get("format",
                                                                                            "model.keras")
        if filename not in files:
            raise IntegrityError(f"{what}: its model file '{filename}' is not among its files")
        if runtime == "onnxruntime":
            from maas.optimize.runtime import load_onnx_session

            model = load_onnx_session(files[filename], threads=replica_cpus(), what=what)
        else:
            model = load_keras_bytes(files[filename], filename, what)
        loaded = cls(name, entry.version, DataSchema.from_dict(entry.metadata["schema"]), model,
                     entry.metadata, runtime)
        loaded.predict(loaded.example_batch())  # warm-up: first call traces the graph
        return loaded

    @cached_property
    def _graph_call(self) -> Any:
        """The model as one traced graph for any batch size, called without tf.function's
        per-call argument binding (``maas.graph_call``): ~95 us for one row of this project's MLP,
        against ~380 us through the tf.function and ~1.5 ms for the eager layer-by-layer call."""
        from maas.graph_call import GraphCall

        return GraphCall(self.model, self.schema.input_shape, self.schema.string_input)

    @cached_property
    def lineage_headers(self) -> dict[str, str]:
        """What answered, on every prediction response: the model, its version, the run that
        trained it (or the version an optimised variant was built from), its content hash prefix
        and the runtime. Computed once per loaded version."""
        parent = (self.metadata.get("lineage") or {}).get("parent") or {}
        headers = {"X-Model-Name": self.name, "X-Model-Version": str(self.version),
                   "X-Model-Hash": str(self.metadata.get("content_hash", "")).removeprefix("sha256:")[:16],
                   "X-Model-Runtime": self.runtime}
        if self.metadata.get("run_id"):
            headers["X-Model-Run"] = str(self.metadata["run_id"])
        if parent:
            headers["X-Model-Parent"] = f"{parent.get('name', self.name)}/{parent.get('version')}"
        return {key: value for key, value in headers.items() if value}

    def example_batch(self) -> np.ndarray:
        if self.schema.is_text:
            return np.array([""])
        if self.schema.is_table:  # numbers "0", categories "" (missing or unknown: a valid lookup)
            categorical, names = self.schema.categorical, self.schema.feature_names or []
            return np.array([["" if name in categorical else "0" for name in names]], dtype=object)
        return np.zeros((1, *self.schema.input_shape), dtype=np.float32)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if self.runtime == "onnxruntime":
            return self.model.predict(batch)
        # Never model.predict(): it costs ~60 ms per call whatever the size.
        return self._graph_call(batch)

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "state": "AVAILABLE",
            "runtime": self.runtime,
            "schema": self.schema.to_dict(),
            "metrics": self.metadata.get("metrics", {}),
            "content_hash": self.metadata.get("content_hash"),
            "signed_by": (self.metadata.get("signature") or {}).get("key_id"),
            "labels": self.metadata.get("labels", []),
            "loaded_at": self.loaded_at,
        }
