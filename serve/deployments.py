"""Ray Serve deployments: one ``ModelServer`` per model, behind one HTTP ``Ingress``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

import numpy as np
from ray import serve

from maas.config import format_validation_error
from maas.serving import (
    LoadedModel,
    ModelSettings,
    RequestError,
    ServingPlan,
    choose_version,
    parse_v2_inputs,
    plan_versions,
    predict_grouped,
    to_batch,
)

logger = logging.getLogger("ray.serve")


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.5})
class ModelServer:
    """Hosts the versions of one registered model that its ``user_config`` picks; batches rows
    from concurrent requests into one model call per version."""

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
        self.plan: ServingPlan | None = None
        self.models: dict[int, LoadedModel] = {}
        self.load_error: str | None = None
        self._sync_lock = asyncio.Lock()
        self._poller: asyncio.Task | None = None
        self._recent: deque[float] = deque()  # request times of the last minute, for `maas status`
        # No load here: Serve calls reconfigure(user_config) right after __init__ (build_app
        # always sets one), so the versions the config picks are the first and only ones loaded.

    # --- versions --------------------------------------------------------------------------

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Runs on every ``user_config`` change (``serve deploy``, ``python -m maas serve ...``),
        on every replica, without a restart. Requests keep being answered while it loads."""
        from pydantic import ValidationError

        try:
            settings = ModelSettings.model_validate(user_config or {})
        except ValidationError as exc:
            raise ValueError(format_validation_error(exc, f"user_config of {self.model_name}")) from None
        self.settings = settings
        self.predict_batch.set_max_batch_size(settings.max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        await self._sync()
        if settings.poll_registry_s > 0 and (self._poller is None or self._poller.done()):
            self._poller = asyncio.get_running_loop().create_task(self._poll_registry())

    async def _poll_registry(self) -> None:
        while self.settings.poll_registry_s > 0:
            await asyncio.sleep(self.settings.poll_registry_s)
            try:
                await self._sync()
            except Exception:  # never let the poller die; the error is in the model's status
                logger.exception("%s: registry poll failed", self.model_name)

    async def _sync(self) -> None:
        """Serve what the settings pick from the registry now. New versions are loaded and warmed
        before they take traffic, and swapped in all at once. If any cannot be loaded (missing,
        tampered, corrupt), what is serving keeps serving and the error shows in the status; with
        nothing serving yet, the replica fails and Serve reports it."""
        async with self._sync_lock:
            try:
                plan = await asyncio.to_thread(self._plan)
                if plan == self.plan:
                    return
                models = {v: self.models.get(v) or await asyncio.to_thread(self._load, v)
                          for v in plan.versions}
            except Exception as exc:
                if not self.models:
                    raise
                served = ", ".join(map(str, self.models))
                self.load_error = f"{exc} (still serving version {served})"
                logger.error("%s: %s", self.model_name, self.load_error)
                return
            self.models, self.plan, self.load_error = models, plan, None
            logger.info("%s: serving versions %s, default %s, labels %s", self.model_name,
                        list(plan.versions), plan.default, plan.labels)

    def _plan(self) -> ServingPlan:
        from maas.registry import Registry

        registry = Registry(self.registry_root)
        registered = registry.versions(self.model_name)
        provisional = plan_versions(self.model_name, self.settings, registered)
        labels = {v: registry.get(self.model_name, v).metadata.get("labels", [])
                  for v in provisional.versions}
        return plan_versions(self.model_name, self.settings, registered, labels)

    def _load(self, version: int) -> LoadedModel:
        return LoadedModel.from_registry(self.registry_root, self.model_name, version)

    async def _ensure_loaded(self) -> ServingPlan:
        if self.plan is None:  # deployed without any user_config: serve the latest version
            await self._sync()
        return self.plan

    # --- requests --------------------------------------------------------------------------

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict_batch(self, items: list[tuple[LoadedModel, np.ndarray]]) -> list[np.ndarray]:
        return predict_grouped(items, self._observe_call)

    def _observe_call(self, model: LoadedModel, rows: int) -> None:
        tags = {"model": self.model_name, "version": str(model.version)}
        self.batch_sizes.observe(rows, tags=tags)
        self.rows.inc(rows, tags=tags)

    async def infer(self, payload: Any, protocol: str = "v1", version: str | None = None,
                    label: str | None = None) -> dict[str, Any]:
        """Validate one request against the version it asks for and predict through the batcher.
        ``payload``: the rows (v1) or the whole request body (v2). Errors come back as data."""
        plan = await self._ensure_loaded()
        self._note_request()
        try:
            model = self.models[choose_version(self.model_name, plan, version, label)]
            rows = parse_v2_inputs(payload, model.schema) if protocol == "v2" else payload
            batch = to_batch(rows, model.schema, self.max_rows)
        except RequestError as exc:
            return {"error": str(exc), "status": exc.status}
        outputs = await self.predict_batch((model, batch))
        return {"outputs": outputs, "version": model.version}

    def _note_request(self) -> None:
        now = time.monotonic()
        self._recent.append(now)
        while self._recent and self._recent[0] < now - 60:
            self._recent.popleft()

    async def status(self, version: str | None = None, label: str | None = None) -> dict[str, Any]:
        """The chosen version's status plus what the model serves overall; errors as data."""
        plan = await self._ensure_loaded()
        try:
            chosen = choose_version(self.model_name, plan, version, label)
        except RequestError as exc:
            return {"error": str(exc), "status": exc.status}
        model = self.models[chosen]
        return {**model.status(),
                "labels": sorted(k for k, v in plan.labels.items() if v == chosen),
                "served_versions": list(plan.versions), "default_version": plan.default,
                "label_map": plan.labels, "policy": self.settings.model_dump(mode="json"),
                "load_error": self.load_error,
                "requests_last_minute": sum(t > time.monotonic() - 60 for t in self._recent)}

    async def check_health(self) -> None:
        await self._ensure_loaded()  # raises, so Serve restarts the replica, if nothing can load
