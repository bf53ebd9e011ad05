"""``ModelHost``: the versions of one registered model inside one Serve replica, with its own
request batcher. The ``ModelServer`` deployment (``serve/deployments.py``) wraps one; the
``Ingress`` holds one per model it hosts in-process (``hosting: ingress``), which saves a Serve
hop per request. Nothing here needs a Serve replica except the default batcher, so tests swap it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from maas.errors import MaasError, OverloadError, RegistryError, UnavailableError, error_reply
from maas.serving.batching import Batcher, predict_grouped
from maas.serving.inputs import to_batch
from maas.serving.model import LoadedModel, Runtime, artifact_runtime
from maas.serving.oip import parse_v2_tensor
from maas.serving.protocol import ApiProtocol
from maas.serving.settings import ModelSettings
from maas.serving.versions import ServingPlan, choose_version, plan_versions

logger = logging.getLogger("ray.serve")

Observe = Callable[[LoadedModel, int], None]


def serve_batcher(settings: ModelSettings) -> Callable[[Callable], Any]:
    """A ``Batcher`` per instance (``@serve.batch`` on a method would share one queue between
    every host in the process, and costs more per request)."""
    return lambda func: Batcher(func, settings.max_batch_size, settings.batch_wait_timeout_s,
                                latency_target_s=_seconds(settings.latency_target_ms), weigh=_rows)


def _rows(item: tuple[LoadedModel, np.ndarray]) -> int:
    """A queued request's rows: what the adaptive batcher fits call time against."""
    return len(item[1])


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1e3


class ModelHost:
    """Serves what a ``ModelSettings`` picks from the registry; batches the rows of concurrent
    requests into one model call per version. ``load`` and ``batcher`` are swappable for tests."""

    def __init__(self, model_name: str, registry_root: str, max_rows_per_request: int,
                 observe: Observe | None = None, load: Callable[[int], LoadedModel] | None = None,
                 verifier: Any = None,
                 batcher: Callable[[ModelSettings], Callable[[Callable], Any]] = serve_batcher):
        self.model_name = model_name
        self.registry_root = registry_root
        self.verifier = verifier  # maas.artifacts.signing.Verifier: versions must carry its signature
        self.max_rows = max_rows_per_request
        self.settings = ModelSettings()
        self.plan: ServingPlan | None = None
        self.models: dict[int, LoadedModel] = {}
        self.load_error: str | None = None
        # Set while no version of the model loads: requests get 503 with this reason, other models
        # and routes keep serving, and loading is retried in the background.
        self.unavailable: str | None = None
        self._retrier: asyncio.Task | None = None
        self._failed_plan: ServingPlan | None = None  # not retried by polling; a config change retries
        self._runtimes: dict[int, Runtime | None] = {}  # version -> its artefact's runtime
        self.pending = 0  # requests inside infer(): validated, queued or in a model call
        self._observe = observe
        self._load = load or self._load_from_registry
        self._predict_batch = batcher(self.settings)(self._predict_many)
        self._sync_lock = asyncio.Lock()
        self._poller: asyncio.Task | None = None
        self._recent: deque[float] = deque()  # request times of the last minute, for `maas status`

    # --- versions --------------------------------------------------------------------------

    async def configure(self, user_config: dict[str, Any] | ModelSettings | None) -> None:
        """Apply settings live: batch size and wait at once, versions after they are loaded."""
        from maas.schema import validate_config

        settings = validate_config(ModelSettings, user_config or {}, f"user_config of {self.model_name}")
        self.settings, self._failed_plan = settings, None
        self._predict_batch.set_max_batch_size(settings.max_batch_size)
        self._predict_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        # test stand-ins for the batcher may not adapt; ours always can
        set_target = getattr(self._predict_batch, "set_latency_target_s", None)
        if set_target is not None:
            set_target(_seconds(settings.latency_target_ms))
        await self.sync()
        if settings.poll_registry_s > 0 and (self._poller is None or self._poller.done()):
            self._poller = asyncio.get_running_loop().create_task(self._poll_registry())

    async def _poll_registry(self) -> None:
        while self.settings.poll_registry_s > 0:
            await asyncio.sleep(self.settings.poll_registry_s)
            try:
                await self.sync(retry_failed=False)
            except Exception:  # never let the poller die; the error is in the model's status
                logger.exception("%s: registry poll failed", self.model_name)

    async def sync(self, retry_failed: bool = True) -> None:
        """Serve what the settings pick from the registry now. New versions are loaded and warmed
        before they take traffic, and swapped in all at once. If any cannot be loaded (missing,
        tampered, corrupt), what is serving keeps serving and the error shows in the status. With
        nothing serving yet (a replica starting), the host falls back to the newest version that
        loaded in any replica before (``Registry.served_history``), else marks the model
        unavailable and retries in the background: a bad version never fails the replica, so it
        never takes the other models and routes down. A poll (``retry_failed=False``) does not
        fetch and hash a plan that already failed again."""
        async with self._sync_lock:
            plan: ServingPlan | None = None
            try:
                plan = await asyncio.to_thread(self._plan)
                if plan == self.plan or (not retry_failed and plan == self._failed_plan):
                    return
                models = {v: self.models.get(v) or await asyncio.to_thread(self._load, v)
                          for v in plan.versions}
            except Exception as exc:
                self._failed_plan = plan
                await asyncio.to_thread(self._audit, "version.refused", reason=str(exc),
                                        versions=list(plan.versions) if plan else None)
                if self.models:
                    served = ", ".join(map(str, self.models))
                    self.load_error = f"{exc} (still serving version {served})"
                    logger.error("%s: %s", self.model_name, self.load_error)
                else:
                    await self._start_with_what_loads(exc)
                return
            self._serve(models, plan, None)
            await self._note_served(plan.default)
            await asyncio.to_thread(self._audit, "version.loaded", versions=list(plan.versions),
                                    default=plan.default, signature_checked=self.verifier is not None)

    def _serve(self, models: dict[int, LoadedModel], plan: ServingPlan, error: str | None) -> None:
        self.models, self.plan, self.load_error, self.unavailable = models, plan, error, None
        if error is None:
            self._failed_plan = None
        logger.info("%s: serving versions %s, default %s, labels %s%s", self.model_name,
                    list(plan.versions), plan.default, plan.labels, f" ({error})" if error else "")

    async def _start_with_what_loads(self, exc: Exception) -> None:
        """Nothing serving and the plan failed: the newest earlier version that loads, else
        unavailable (503 for this model only) with a background retry."""
        try:
            history = await asyncio.to_thread(self._served_history)
        except Exception:  # a registry outage: nothing to fall back to right now
            history = []
        for version in history:
            try:
                model = await asyncio.to_thread(self._load, version)
            except Exception:
                continue
            error = f"{exc}; serving version {version}, the last that loaded, instead"
            self._serve({version: model}, ServingPlan((version,), {}, version), error)
            logger.error("%s: %s", self.model_name, error)
            return
        self.unavailable = f"{exc}" + (f"; earlier versions {history} do not load either" if history else "")
        logger.error("%s: unavailable: %s", self.model_name, self.unavailable)
        if self._retrier is None or self._retrier.done():
            self._retrier = asyncio.get_running_loop().create_task(self._retry_until_available())

    async def _retry_until_available(self, first_wait_s: float = 5.0, longest_wait_s: float = 60.0) -> None:
        wait = first_wait_s
        while self.unavailable is not None and not self.models:
            await asyncio.sleep(wait)
            try:
                await self.sync()
            except Exception:  # never let the retrier die; the reason is in the model's status
                logger.exception("%s: retry failed", self.model_name)
            wait = min(wait * 2, longest_wait_s)

    async def _note_served(self, version: int) -> None:
        """Record a version that loaded where every replica can read it; a read-only registry
        only costs the fallback, never the swap."""
        try:
            await asyncio.to_thread(self._record_served, version)
        except Exception as exc:
            logger.warning("%s: could not record version %s as served: %s", self.model_name, version, exc)

    def _audit(self, action: str, **fields: Any) -> None:
        from maas.audit import audit_root, record

        record(audit_root(self.registry_root), action, model=self.model_name, **fields)

    def _served_history(self) -> list[int]:
        from maas.registry import Registry

        return Registry(self.registry_root).served_history(self.model_name)

    def _record_served(self, version: int) -> None:
        from maas.registry import Registry

        Registry(self.registry_root).record_served(self.model_name, version)

    def _plan(self) -> ServingPlan:
        from maas.registry import Registry

        registry = Registry(self.registry_root)
        registered = self._servable(registry, registry.versions(self.model_name))
        provisional = plan_versions(self.model_name, self.settings, registered)
        labels = {v: registry.metadata(self.model_name, v).get("labels", [])
                  for v in provisional.versions}
        return plan_versions(self.model_name, self.settings, registered, labels)

    def _servable(self, registry: Any, versions: list[int]) -> list[int]:
        """The versions this host may serve: a runtime it has, the one the settings ask for."""
        wanted = self.settings.runtime
        for version in versions:
            if version not in self._runtimes:  # a version's artefact never changes: read once
                self._runtimes[version] = artifact_runtime(registry.metadata(self.model_name, version))
        servable = [v for v in versions if self._runtimes[v] is not None
                    and wanted in ("any", self._runtimes[v])]
        if versions and not servable:
            kinds = ", ".join(f"{v}: {self._runtimes[v] or 'not served'}" for v in versions)
            raise RegistryError(f"model '{self.model_name}' has no version to serve with runtime "
                                f"'{wanted}' (versions: {kinds})")
        return servable

    def _load_from_registry(self, version: int) -> LoadedModel:
        return LoadedModel.from_registry(self.registry_root, self.model_name, version, self.verifier)

    async def ensure_loaded(self) -> ServingPlan:
        """What is served now; ``UnavailableError`` while no version of the model loads."""
        if self.plan is None and self.unavailable is None:  # never configured: the defaults' pick
            await self.sync()
        if self.plan is None:
            raise UnavailableError(f"model '{self.model_name}' is unavailable: {self.unavailable}")
        return self.plan

    # --- requests --------------------------------------------------------------------------

    async def _predict_many(self, items: list[tuple[LoadedModel, np.ndarray]]) -> list[np.ndarray]:
        return predict_grouped(items, self._observe)

    async def infer(self, payload: Any, protocol: ApiProtocol = "v1", version: str | None = None,
                    label: str | None = None) -> dict[str, Any]:
        """Validate one request against the version it asks for and predict through the batcher.
        ``payload``: the rows (v1) or the whole request body (v2). Errors come back as data
        (``maas.errors.ErrorReply``), the shape that crosses a Serve handle."""
        self._note_request()
        try:
            plan = await self.ensure_loaded()
            if self.pending >= self.settings.max_pending_requests:
                raise OverloadError(
                    f"model '{self.model_name}' is overloaded: {self.pending} requests are already "
                    f"waiting (max_pending_requests={self.settings.max_pending_requests})")
            model = self.models[choose_version(self.model_name, plan, version, label)]
            rows = parse_v2_tensor(payload, model.schema) if protocol == "v2" else payload
            batch = to_batch(rows, model.schema, self.max_rows)
        except MaasError as exc:
            return dict(error_reply(exc))
        self.pending += 1
        try:
            outputs = await self._predict_batch((model, batch))
        finally:
            self.pending -= 1
        return {"outputs": outputs, "version": model.version, "lineage": model.lineage_headers}

    def _note_request(self) -> None:
        now = time.monotonic()
        self._recent.append(now)
        while self._recent and self._recent[0] < now - 60:
            self._recent.popleft()

    async def status(self, version: str | None = None, label: str | None = None) -> dict[str, Any]:
        """The chosen version's status plus what the model serves overall; errors as data."""
        try:
            plan = await self.ensure_loaded()
            chosen = choose_version(self.model_name, plan, version, label)
        except MaasError as exc:
            return dict(error_reply(exc))
        model = self.models[chosen]
        return {**model.status(),
                "labels": sorted(k for k, v in plan.labels.items() if v == chosen),
                "served_versions": list(plan.versions), "default_version": plan.default,
                "label_map": plan.labels, "policy": self.settings.model_dump(mode="json"),
                "load_error": self.load_error, "pending_requests": self.pending,
                "requests_last_minute": sum(t > time.monotonic() - 60 for t in self._recent),
                **self._batching_status()}

    def _batching_status(self) -> dict[str, Any]:
        """The adaptive batcher's current wait, cap and observed call time, while it is on."""
        policy = getattr(self._predict_batch, "policy", None)
        return {} if policy is None else {"batching": policy.state()}
