"""Ray Serve deployments: one ``ModelServer`` per model, behind one HTTP ``Ingress``."""

from __future__ import annotations

import logging
import time
from collections import deque
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
        self.load_error: str | None = None
        self._recent: deque[float] = deque()  # request times of the last minute, for `maas status`
        # No load here: Serve calls reconfigure(user_config) right after __init__ (build_app
        # always sets one), so a version pinned in user_config is the first and only one loaded.

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
            self._swap_to(settings.version)
        self.predict_batch.set_max_batch_size(settings.max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        self.settings = settings

    def _swap_to(self, version: int | str) -> None:
        """Load and warm ``version`` before it takes traffic. If it cannot be loaded (missing,
        tampered, corrupt) while another version is serving, that one keeps serving and the
        error is reported in the model's status; with nothing loaded yet, the replica fails."""
        try:
            candidate = LoadedModel.from_registry(self.registry_root, self.model_name, version)
        except Exception as exc:
            if self.loaded is None:
                raise
            self.load_error = f"version {version!r} not loaded, still serving {self.loaded.version}: {exc}"
            logger.error("%s: %s", self.model_name, self.load_error)
            return
        self.loaded, self.load_error = candidate, None
        logger.info("serving %s version %s", self.model_name, candidate.version)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict_batch(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        stacked = np.concatenate(batches) if len(batches) > 1 else batches[0]
        tags = {"model": self.model_name, "version": str(self.loaded.version)}
        self.batch_sizes.observe(len(stacked), tags=tags)
        self.rows.inc(len(stacked), tags=tags)
        return split_batch(self.loaded.predict(stacked), [len(b) for b in batches])

    def _ensure_loaded(self) -> LoadedModel:
        if self.loaded is None:  # deployed without any user_config: serve the latest version
            self._apply(self.settings)
        return self.loaded

    async def infer(self, rows: Any) -> dict[str, Any]:
        """Validate one request's rows, predict through the batcher. Errors come back as data."""
        self._ensure_loaded()
        self._note_request()
        try:
            batch = to_batch(rows, self.loaded.schema, self.max_rows)
        except RequestError as exc:
            return {"error": str(exc), "status": exc.status}
        outputs = await self.predict_batch(batch)
        return {"outputs": outputs, "version": self.loaded.version}

    def _note_request(self) -> None:
        now = time.monotonic()
        self._recent.append(now)
        while self._recent and self._recent[0] < now - 60:
            self._recent.popleft()

    def status(self) -> dict[str, Any]:
        return {**self._ensure_loaded().status(), "requested_version": self.settings.version,
                "load_error": self.load_error,
                "requests_last_minute": sum(t > time.monotonic() - 60 for t in self._recent)}

    def check_health(self) -> None:
        self._ensure_loaded()  # raises, so Serve restarts the replica, if no version can load
