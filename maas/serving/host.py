"""``ModelHost``: the versions of one registered model inside one Serve replica, with its own
request batcher. The ``ModelServer`` deployment (``serve/deployments.py``) wraps one; the
``Ingress`` holds one per model it hosts in-process (``hosting: ingress``), which saves a Serve
hop per request. Nothing here needs a Serve replica except the default batcher, so tests swap it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from maas.errors import (
    MaasError,
    OverloadError,
    RegistryError,
    RequestError,
    UnavailableError,
    error_reply,
)
from maas.serving.batching import Batcher, predict_grouped
from maas.serving.canary import (
    Caller,
    Decision,
    FeedbackMemory,
    Rollout,
    Split,
    label_index,
    predicted_classes,
    rollout_id,
)
from maas.serving.capture import Capture
from maas.serving.inputs import to_batch
from maas.serving.model import LoadedModel, Runtime, artifact_runtime
from maas.serving.oip import parse_v2_tensor
from maas.serving.protocol import ApiProtocol
from maas.serving.settings import CaptureSettings, ModelSettings
from maas.serving.versions import ServingPlan, choose_version, plan_versions

logger = logging.getLogger("ray.serve")

Observe = Callable[[LoadedModel, int], None]


def serve_batcher(settings: ModelSettings) -> Callable[[Callable], Any]:
    """A ``Batcher`` per instance (``@serve.batch`` on a method would share one queue between
    every host in the process, and costs more per request)."""
    return lambda func: Batcher(func, settings.max_batch_size, settings.batch_wait_timeout_s,
                                latency_target_s=_seconds(settings.latency_target_ms), weigh=_rows)


def _short_reason(exc: Exception) -> str:
    """The line of an exception's message that says what went wrong: TensorFlow's graph errors
    put it last, after the Python stack that built the node."""
    lines = [line.strip() for line in str(exc).splitlines()]
    kept = [line for line in lines if line and not line.startswith(("File ", "[[", "Detected at node"))]
    return (kept[-1] if kept else "")[:300]


def _rows(item: tuple[LoadedModel, np.ndarray]) -> int:
    """A queued request's rows: what the adaptive batcher fits call time against."""
    return len(item[1])


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1e3


def _route(version: str | None, label: str | None) -> str:
    """What a captured request asked for: ``default``, ``version/3`` or ``label/stable``."""
    if version is not None:
        return f"version/{version}"
    return "default" if label is None else f"label/{label}"


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
        # Traffic split (settings.traffic) of requests naming no version; None: the default answers
        self.split: Split | None = None
        self.rollout: Rollout | None = None  # a canary rollout (settings.rollout), when one runs
        self.rollout_note: dict[str, str] | None = None  # why a configured rollout is not running
        self._rollout_task: asyncio.Task | None = None
        self._judging: asyncio.Task | None = None  # an early judgement after a canary's failure
        self.answers = FeedbackMemory()  # answers given by split, for POST .../feedback
        self.capture: Capture | None = None  # sampled requests and feedback (settings.capture), when on
        self.replica = f"{socket.gethostname()}-{os.getpid()}"
        self.clock: Callable[[], float] = time.monotonic  # a rollout's windows (tests: virtual)

    # --- versions --------------------------------------------------------------------------

    async def configure(self, user_config: dict[str, Any] | ModelSettings | None) -> None:
        """Apply settings live: batch size and wait at once, versions after they are loaded."""
        from maas.schema import validate_config

        settings = validate_config(ModelSettings, user_config or {}, f"user_config of {self.model_name}")
        self.settings, self._failed_plan = settings, None
        await self._configure_capture(settings.capture)
        self._predict_batch.set_max_batch_size(settings.max_batch_size)
        self._predict_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        # test stand-ins for the batcher may not adapt; ours always can
        set_target = getattr(self._predict_batch, "set_latency_target_s", None)
        if set_target is not None:
            set_target(_seconds(settings.latency_target_ms))
        await self.sync()
        self._build_routing()  # the rollout policy may change with the same plan
        await self._follow_rollout()
        if settings.poll_registry_s > 0 and (self._poller is None or self._poller.done()):
            self._poller = asyncio.get_running_loop().create_task(self._poll_registry())

    async def _configure_capture(self, settings: CaptureSettings | None) -> None:
        """Capture on (a writer task on this loop), changed in place (its buffer kept), or off
        (what it holds written first)."""
        capture = self.capture
        if settings is None or settings.rate <= 0:
            if capture is not None:
                self.capture = None
                await capture.close()
                logger.info("%s: capture off (%d rows written by this replica)", self.model_name,
                            capture.written_rows)
            return
        if capture is None:
            capture = Capture(self.model_name, self.registry_root, settings, self.replica)
            capture.start()
            self.capture = capture
            logger.info("%s: capturing %g of requests to %s", self.model_name, settings.rate,
                        capture.state()["path"])
        else:
            capture.apply(settings)

    def close_capture(self) -> None:
        """Write what capture holds now, in this thread (a replica shutting down)."""
        capture, self.capture = self.capture, None
        if capture is not None:
            try:
                capture.shutdown()
            except Exception as exc:  # shutting down: say what was lost, never raise
                logger.warning("%s: captured traffic not written at shutdown: %s", self.model_name, exc)

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
            await self._follow_rollout()
            await self._note_served(plan.default)
            await asyncio.to_thread(self._audit, "version.loaded", versions=list(plan.versions),
                                    default=plan.default, signature_checked=self.verifier is not None)

    def _serve(self, models: dict[int, LoadedModel], plan: ServingPlan, error: str | None) -> None:
        self.models, self.plan, self.load_error, self.unavailable = models, plan, error, None
        if error is None:
            self._failed_plan = None
        self._build_routing()  # before any await: the split only ever names served versions
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

        return registry_plan(Registry(self.registry_root), self.model_name, self.settings, self._runtimes)

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

    async def _predict_many(self, items: list[tuple[LoadedModel, np.ndarray]]) -> list[Any]:
        if self.split is None:
            return predict_grouped(items, self._observe)
        return self._predict_apart(items)

    def _predict_apart(self, items: list[tuple[LoadedModel, np.ndarray]]) -> list[Any]:
        """With a traffic split: one call per version as ``predict_grouped``, but a version whose
        call fails fails only its own requests (their result is the exception), and a rollout
        counts each version's requests, failures and call time. The call time, not the whole
        request's latency, is what tells versions apart: they share the replica's batches and
        event loop, so a slow canary delays the stable requests beside it too."""
        groups: dict[int, list[int]] = {}
        for index, (model, _) in enumerate(items):
            groups.setdefault(id(model), []).append(index)
        rollout = self.rollout if self.rollout is not None and self.rollout.running else None
        results: list[Any] = [None] * len(items)
        for indices in groups.values():
            part = [items[i] for i in indices]
            arm = rollout.arm(part[0][0].version) if rollout is not None else None
            started = time.perf_counter()
            try:
                outputs: list[Any] = predict_grouped(part, self._observe)
            except Exception as exc:  # noqa: BLE001 - answered as the request's error
                if arm is not None:
                    arm.failed(len(indices))
                    if arm is rollout.canary and arm.requests >= rollout.policy.min_requests:
                        self._judge_soon(rollout)  # a failing canary: not a poll interval later
                logger.warning("%s: version %s failed a call for %d requests: %s: %s", self.model_name,
                               part[0][0].version, len(indices), type(exc).__name__, _short_reason(exc))
                outputs = [exc] * len(indices)
            else:
                if arm is not None:
                    arm.called(len(indices), time.perf_counter() - started)
            for i, output in zip(indices, outputs, strict=True):
                results[i] = output
        return results

    @property
    def routes_callers(self) -> bool:
        """Whether ``infer`` wants the ``Caller`` (a traffic split: stickiness, feedback; capture:
        the request id); the dataplane builds none otherwise."""
        return self.split is not None or self.capture is not None

    async def infer(self, payload: Any, protocol: ApiProtocol = "v1", version: str | None = None,
                    label: str | None = None, caller: Caller | None = None) -> dict[str, Any]:
        """Validate one request against the version it asks for and predict through the batcher.
        ``payload``: the rows (v1) or the whole request body (v2). A request naming no version
        goes by the traffic split when there is one (``caller``: who asks, for stickiness and
        feedback). Errors come back as data (``maas.errors.ErrorReply``), the shape that crosses
        a Serve handle."""
        arrived = self._note_request()
        split = None
        try:
            plan = await self.ensure_loaded()
            if self.pending >= self.settings.max_pending_requests:
                raise OverloadError(
                    f"model '{self.model_name}' is overloaded: {self.pending} requests are already "
                    f"waiting (max_pending_requests={self.settings.max_pending_requests})")
            split = self.split if version is None and label is None else None
            chosen = split.choose(caller) if split is not None else choose_version(
                self.model_name, plan, version, label)
            model = self.models[chosen]
            rows = parse_v2_tensor(payload, model.schema) if protocol == "v2" else payload
            batch = to_batch(rows, model.schema, self.max_rows)
        except MaasError as exc:
            return dict(error_reply(exc))
        self.pending += 1
        try:
            outputs = await self._predict_batch((model, batch))
        finally:
            self.pending -= 1
        if isinstance(outputs, Exception):  # its version's call failed (``_predict_apart``)
            return dict(error_reply(MaasError(
                f"model '{self.model_name}' version {model.version} failed to answer: "
                f"{type(outputs).__name__}: {_short_reason(outputs)}", status=500)))
        if split is not None and caller is not None and caller.request_id:
            self.answers.remember(caller.request_id, model.version, predicted_classes(outputs))
        capture = self.capture
        if capture is not None:
            capture.offer(caller.request_id if caller is not None else None, model, protocol,
                          "traffic" if split is not None else _route(version, label), batch, outputs,
                          time.monotonic() - arrived)
        return {"outputs": outputs, "version": model.version, "lineage": model.lineage_headers}

    async def feedback(self, request_id: str, label: Any) -> dict[str, Any]:
        """Score a client's true label against what this replica answered to ``request_id``
        (one label, or a list of one per row); errors as data. Counted for the rollout's accuracy
        rule when the answer came from the canary or the stable version. With capture on, also
        recorded for the capture (``_captured_feedback``), for any request id."""
        capture = self.capture
        try:
            found = self.answers.take(request_id) if isinstance(request_id, str) else None
            if found is None and capture is not None:  # joined with the capture when it is read
                return self._captured_feedback(capture, request_id, label)
            if found is None:
                why = ("it has no traffic split (settings traffic), so no answers are kept, and no "
                       "capture (settings capture), which would record the label for any request"
                       if self.split is None and not len(self.answers) else
                       f"this replica keeps the last {self.answers.capacity} answers it gave by "
                       f"traffic split, each scored once; an answer from another replica is not "
                       f"known here")
                raise RequestError(f"model '{self.model_name}' has no answer to request id "
                                   f"{request_id!r} to score: {why}", status=404)
            version, predicted = found
            labels = label if isinstance(label, list) else [label]
            if len(labels) != len(predicted):
                raise RequestError(f"request {request_id!r} predicted {len(predicted)} rows; send one "
                                   f"label, or a list of {len(predicted)} (got {len(labels)})")
            model = self.models.get(version)
            classes = list(model.schema.classes) if model is not None else []
            truth = [label_index(value, classes) if classes else value for value in labels]
            unknown = [value for value, index in zip(labels, truth, strict=True) if index is None]
            if unknown:
                self.answers.remember(request_id, version, predicted)  # a typo: may be sent again
                raise RequestError(f"label {unknown[0]!r} is not a class of model '{self.model_name}' "
                                   f"(classes: {classes})")
            correct = sum(int(t == p) for t, p in zip(truth, predicted, strict=True))
        except MaasError as exc:
            return dict(error_reply(exc))
        rollout = self.rollout
        arm = rollout.arm(version) if rollout is not None and rollout.running else None
        if arm is not None:
            arm.scored(len(predicted), correct)
        captured = capture is not None and capture.record_feedback(
            request_id, [str(classes[t]) if classes else str(t) for t in truth])
        return {"request_id": request_id, "version": version,
                "predicted": [classes[i] if classes else i for i in predicted],
                "correct": correct, "rows": len(predicted), "counted": arm is not None,
                **({"captured": captured} if capture is not None else {})}

    def _captured_feedback(self, capture: Capture, request_id: Any, label: Any) -> dict[str, Any]:
        """Feedback for a request this replica did not answer by traffic split: checked against
        the served classes and recorded next to the capture, where the reader joins it with the
        request's captured rows by id (whichever replica answered it)."""
        try:
            if not isinstance(request_id, str) or not request_id.strip() or len(request_id) > 256:
                raise RequestError(f"request_id must be the answer's X-Request-ID (1-256 characters), "
                                   f"got {request_id!r}")
            labels = label if isinstance(label, list) else [label]
            if not labels or any(isinstance(v, bool) or not isinstance(v, (str, int, float)) for v in labels):
                raise RequestError(f"label must be a class (text or number), or a non-empty list of one "
                                   f"per row; got {label!r}")
            model = self.models.get(self.plan.default) if self.plan is not None else None
            classes = list(model.schema.classes) if model is not None else []
            texts = []
            for value in labels:
                index = label_index(value, classes) if classes else None
                if classes and index is None:
                    raise RequestError(f"label {value!r} is not a class of model '{self.model_name}' "
                                       f"(classes: {classes})")
                texts.append(str(classes[index]) if index is not None else str(value))
            if not capture.record_feedback(request_id, texts):
                raise OverloadError(f"model '{self.model_name}' has {len(capture.feedback)} feedback "
                                    f"records waiting to be written; send it again shortly",
                                    retry_after_s=capture.flush_s)
        except MaasError as exc:
            return dict(error_reply(exc))
        return {"request_id": request_id, "version": None, "predicted": None, "correct": None,
                "rows": len(texts), "labels": texts, "counted": False, "captured": True}

    # --- traffic split and rollout ---------------------------------------------------------

    def _build_routing(self) -> None:
        """The split (and rollout) the settings and the plan make; a rollout already running
        under the same id keeps its state."""
        plan, settings = self.plan, self.settings
        self.rollout_note = None
        if plan is None or not plan.traffic:
            self.split = self.rollout = None
            return
        if settings.rollout is None or set(settings.traffic or {}) != {k for k, _, _ in plan.traffic}:
            # no rollout; or settings newer than the plan being served (their plan failed to
            # load, or is loading): the served plan's split, and the rollout once its plan serves
            self.rollout = None
            self.split = Split([(v, w) for _, v, w in plan.traffic], settings.sticky, self.model_name)
            if settings.rollout is not None:
                self.rollout_note = {"state": "waiting",
                                     "reason": "the versions its traffic names are not served yet"}
            return
        canary_key, stable_key = settings.rollout_keys()
        versions = {key: version for key, version, _ in plan.traffic}
        weights = {key: weight for key, _, weight in plan.traffic}
        start = weights[canary_key] / sum(weights.values()) * 100
        identity = rollout_id(self.model_name, settings, plan.traffic)
        if start == 0:
            self.rollout = None
            self.rollout_note = {"state": "stopped",
                                 "reason": f"the canary '{canary_key}' has weight 0 (aborted, or not begun)"}
            self.split = Split([(v, w) for _, v, w in plan.traffic], settings.sticky, self.model_name)
            return
        if self.rollout is None or self.rollout.id != identity:
            self.rollout = Rollout(identity, settings.rollout, versions[canary_key],
                                   versions[stable_key], start, replica=self.replica, clock=self.clock)
            logger.info("%s: rollout %s of version %s against %s starts at %g%%", self.model_name,
                        identity, versions[canary_key], versions[stable_key], start)
        self._apply_share()

    def _apply_share(self) -> None:
        rollout = self.rollout
        if rollout is not None:  # the canary first: a promotion only moves sticky callers onto it
            self.split = Split([(rollout.canary_version, rollout.share),
                                (rollout.stable_version, 100 - rollout.share)],
                               self.settings.sticky, self.model_name)

    async def _follow_rollout(self) -> None:
        """Adopt what other replicas decided, and judge in the background while it runs."""
        rollout = self.rollout
        if rollout is None:
            return
        await self._share_decisions(rollout)
        if rollout.decision.state != "rolled_back" and (
                self._rollout_task is None or self._rollout_task.done()):
            self._rollout_task = asyncio.get_running_loop().create_task(self._run_rollout())

    async def _run_rollout(self) -> None:
        """Every ``poll_s``: read the shared decisions, then judge. After a rollback (final for
        this configuration) it stops; after the last promotion it keeps reading, slowly, since a
        rollback another replica made at the same moment still wins."""
        while True:
            rollout = self.rollout
            if rollout is None or rollout.decision.state == "rolled_back":
                return
            await asyncio.sleep(rollout.poll_s if rollout.running else 5.0)
            if self.rollout is not rollout:
                continue
            try:
                await self._share_decisions(rollout)
                decision = rollout.tick()
                if decision is not None:
                    self._apply_share()
                    await self._publish(rollout, decision)
            except Exception:  # never let the judge die; what it knows is in the status
                logger.exception("%s: rollout %s step failed", self.model_name, rollout.id)

    def _judge_soon(self, rollout: Rollout) -> None:
        """Judge right after this batch instead of at the next poll, once at a time: bounds what
        a failing canary can hurt to about ``min_requests`` per replica."""
        if self._judging is not None and not self._judging.done():
            return

        async def judge() -> None:
            decision = rollout.tick() if self.rollout is rollout else None
            if decision is not None:
                self._apply_share()
                await self._publish(rollout, decision)

        self._judging = asyncio.get_running_loop().create_task(judge())

    async def _share_decisions(self, rollout: Rollout) -> None:
        try:
            raw = await asyncio.to_thread(self._read_decisions, rollout.id)
        except Exception as exc:  # a storage outage: judge on, share later
            logger.warning("%s: rollout decisions not read: %s", self.model_name, exc)
            return
        shared = [Decision.from_dict(d) for d in raw if isinstance(d, dict)]
        adopted = rollout.adopt(shared)
        if adopted is not None:
            self._apply_share()
            logger.info("%s: rollout %s: canary version %s at %g%% (%s, decided by %s): %s",
                        self.model_name, rollout.id, rollout.canary_version, adopted.share,
                        adopted.state, adopted.replica or "another replica", adopted.reason)
        elif rollout.behind(shared):
            await self._write_shared(rollout.decision)

    async def _publish(self, rollout: Rollout, decision: Decision) -> None:
        log = logger.warning if decision.state == "rolled_back" else logger.info
        log("%s: rollout %s: canary version %s %s, now %g%% of requests naming no version: %s",
            self.model_name, rollout.id, rollout.canary_version,
            "rolled back" if decision.state == "rolled_back" else "promoted", decision.share,
            decision.reason)
        await self._write_shared(decision)
        from maas.audit import ROLLOUT_ACTIONS

        action = ROLLOUT_ACTIONS[1] if decision.state == "rolled_back" else ROLLOUT_ACTIONS[0]
        await asyncio.to_thread(self._audit, action, rollout_id=rollout.id, state=decision.state,
                                canary_version=rollout.canary_version,
                                stable_version=rollout.stable_version, share=decision.share,
                                reason=decision.reason, stats=decision.stats, replica=self.replica)

    async def _write_shared(self, decision: Decision) -> None:
        try:
            await asyncio.to_thread(self._write_decision, decision.rollout_id, decision.to_dict())
        except Exception as exc:  # written again at the next poll (``Rollout.behind``)
            logger.warning("%s: rollout decision not shared yet: %s", self.model_name, exc)

    def _read_decisions(self, identity: str) -> list[dict[str, Any]]:
        from maas.registry import Registry

        return Registry(self.registry_root).rollout_decisions(self.model_name, identity)

    def _write_decision(self, identity: str, decision: dict[str, Any]) -> None:
        from maas.registry import Registry

        Registry(self.registry_root).record_rollout_decision(self.model_name, identity, decision)

    def _note_request(self) -> float:
        now = time.monotonic()
        self._recent.append(now)
        while self._recent and self._recent[0] < now - 60:
            self._recent.popleft()
        return now

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
                **self._batching_status(), **self._traffic_status(plan),
                **({"capture": self.capture.state()} if self.capture is not None else {})}

    def _traffic_status(self, plan: ServingPlan) -> dict[str, Any]:
        """The split of requests naming no version and the rollout's state, while configured."""
        if not plan.traffic:
            return {}
        status: dict[str, Any] = {"traffic": {
            "weights": {key: weight for key, _, weight in plan.traffic},
            "versions": {key: version for key, version, _ in plan.traffic},
            "percent": self.split.percent() if self.split is not None else {},
            "sticky": self.settings.sticky}}
        if self.rollout is not None:
            status["rollout"] = self.rollout.state()
        elif self.rollout_note is not None:
            status["rollout"] = dict(self.rollout_note)
        return status

    def _batching_status(self) -> dict[str, Any]:
        """The adaptive batcher's current wait, cap and observed call time, while it is on."""
        policy = getattr(self._predict_batch, "policy", None)
        return {} if policy is None else {"batching": policy.state()}


def registry_plan(registry: Any, name: str, settings: ModelSettings,
                  runtimes: dict[int, Runtime | None] | None = None) -> ServingPlan:
    """What ``settings`` pick from the registry, as every replica resolves it (``python -m maas
    serve rollout`` resolves it the same way to find the rollout's shared decisions).
    ``runtimes``: a cache of each version's runtime (a version's artefact never changes)."""
    registered = _servable(registry, name, settings, registry.versions(name),
                           {} if runtimes is None else runtimes)
    provisional = plan_versions(name, settings, registered)
    labels = {v: registry.metadata(name, v).get("labels", []) for v in provisional.versions}
    return plan_versions(name, settings, registered, labels)


def _servable(registry: Any, name: str, settings: ModelSettings, versions: list[int],
              runtimes: dict[int, Runtime | None]) -> list[int]:
    """The versions a host may serve: a runtime it has, the one the settings ask for."""
    wanted = settings.runtime
    for version in versions:
        if version not in runtimes:
            runtimes[version] = artifact_runtime(registry.metadata(name, version))
    servable = [v for v in versions if runtimes[v] is not None and wanted in ("any", runtimes[v])]
    if versions and not servable:
        kinds = ", ".join(f"{v}: {runtimes[v] or 'not served'}" for v in versions)
        raise RegistryError(f"model '{name}' has no version to serve with runtime "
                            f"'{wanted}' (versions: {kinds})")
    return servable
