"""Ray Serve deployments: one ``ModelServer`` per model, behind one HTTP ``Ingress``."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from ray import serve

from maas.config import format_validation_error
from maas.serving import LoadedModel, ModelSettings, RequestError, split_batch, to_batch

logger = logging.getLogger("ray.serve")


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.5})
class ModelServer:
    """Hosts one registered model; batches rows from concurrent requests into one model call."""

    def __init__(self, model_name: str, registry_root: str, max_rows_per_request: int):
        from ray.util import metrics

        self.batch_sizes = metrics.Histogram(
            "maas_batch_size", "Rows per model call after batching",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024], tag_keys=("model", "version"))
        self.rows = metrics.Counter("maas_rows_predicted_total", "Rows predicted",
                                    tag_keys=("model", "version"))
        self.model_name = model_name
        self.registry_root = registry_root
        self.max_rows = max_rows_per_request
        self.settings = ModelSettings()
        self.loaded: LoadedModel | None = None
        self._apply(ModelSettings())

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Runs on every ``user_config`` change (``serve deploy``), without a replica restart."""
        from pydantic import ValidationError

        try:
            settings = ModelSettings.model_validate(user_config or {})
        except ValidationError as exc:
            raise ValueError(format_validation_error(exc, f"user_config of {self.model_name}")) from None
        self._apply(settings)

    def _apply(self, settings: ModelSettings) -> None:
        if self.loaded is None or settings.version != self.settings.version:
            # Load (and warm) the new version before swapping: on failure the old one keeps serving.
            self.loaded = LoadedModel.from_registry(self.registry_root, self.model_name, settings.version)
            logger.info("serving %s version %s", self.model_name, self.loaded.version)
        self.predict_batch.set_max_batch_size(settings.max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        self.settings = settings

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict_batch(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        stacked = np.concatenate(batches) if len(batches) > 1 else batches[0]
        tags = {"model": self.model_name, "version": str(self.loaded.version)}
        self.batch_sizes.observe(len(stacked), tags=tags)
        self.rows.inc(len(stacked), tags=tags)
        return split_batch(self.loaded.predict(stacked), [len(b) for b in batches])

    async def infer(self, rows: Any) -> dict[str, Any]:
        """Validate one request's rows, predict through the batcher. Errors come back as data."""
        try:
            batch = to_batch(rows, self.loaded.schema, self.max_rows)
        except RequestError as exc:
            return {"error": str(exc), "status": exc.status}
        outputs = await self.predict_batch(batch)
        return {"outputs": outputs, "version": self.loaded.version}

    def status(self) -> dict[str, Any]:
        return self.loaded.status()

    def check_health(self) -> None:
        if self.loaded is None:
            raise RuntimeError(f"{self.model_name}: no model loaded")
