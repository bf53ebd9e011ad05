"""One registered version, loaded and warmed: the model called as one traced graph."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from maas.data import DataSchema


@dataclass
class LoadedModel:
    name: str
    version: int
    schema: DataSchema
    model: Any
    metadata: dict[str, Any]
    loaded_at: float = field(default_factory=time.time)

    @classmethod
    def from_registry(cls, root: str, name: str, version: int | str = "latest") -> LoadedModel:
        """Resolve, fetch, verify the content hash, load in safe mode and warm up."""
        from maas.registry import Registry
        from maas.tfkeras import load_model

        registry = Registry(root)
        entry = registry.get(name, version)
        directory = registry.fetch(entry)
        model = load_model(str(directory / entry.metadata.get("format", "model.keras")), compile=False)
        loaded = cls(name, entry.version, DataSchema.from_dict(entry.metadata["schema"]), model,
                     entry.metadata)
        loaded.predict(loaded.example_batch())  # warm-up: first call traces the graph
        return loaded

    @cached_property
    def _graph_call(self) -> Any:
        """The model as one traced graph for any batch size: a call costs ~0.4 ms instead of
        ~1.5 ms for the eager layer-by-layer call (measured on this project's MLP, 1-32 rows)."""
        from maas.tfkeras import tensorflow

        tf = tensorflow()
        spec = tf.TensorSpec([None, *self.schema.input_shape],
                             tf.string if self.schema.is_text else tf.float32)
        model = self.model

        def call(batch: Any) -> Any:
            return model(batch, training=False)

        return tf.function(call, input_signature=[spec], autograph=False)

    def example_batch(self) -> np.ndarray:
        if self.schema.is_text:
            return np.array([""])
        return np.zeros((1, *self.schema.input_shape), dtype=np.float32)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        # Never model.predict(): it costs ~60 ms per call whatever the size.
        return self._graph_call(batch).numpy()

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "state": "AVAILABLE",
            "schema": self.schema.to_dict(),
            "metrics": self.metadata.get("metrics", {}),
            "content_hash": self.metadata.get("content_hash"),
            "labels": self.metadata.get("labels", []),
            "loaded_at": self.loaded_at,
        }
