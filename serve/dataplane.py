"""What every route shares, KServe's ``dataplane.py`` in our terms: the table of served models
(hosted in this replica, or in a deployment of their own behind a handle, called the same way),
reading a request body, the predict pipeline, and request metrics."""

# No `from __future__ import annotations`: FastAPI must see the real `Request` class.
import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from maas.errors import MaasError, OverloadError, RequestError, raise_if_error
from maas.serving.auth import KeyChecker, claimed_key_id
from maas.serving.canary import Caller
from maas.serving.host import ModelHost
from maas.serving.json_arrays import JsonArrays
from maas.serving.metrics import CountBuffer
from maas.serving.oip import V2Reply, v2_reply_options
from maas.serving.oip_binary import INFERENCE_HEADER, BinaryBody, read_v2_body
from maas.serving.protocol import ApiProtocol
from maas.serving.settings import ServeAppConfig
from maas.serving.tfserving import Format, extract_rows
from serve.deployments import model_call_metrics
from serve.http import binary_response, json_response

logger = logging.getLogger("ray.serve")

# respond(result, context) -> the protocol's response body (JSON, or binary tensor data framed after
# a JSON header); context: the v1 format, or the v2 request's id and binary outputs (``V2Reply``)
Respond = Callable[[dict[str, Any], Any], dict[str, Any] | BinaryBody]


def _parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"request body is not valid JSON: {exc}") from None


class DeploymentModel:
    """A model in a deployment of its own, behind the same two calls as an in-process
    ``ModelHost``, so the dataplane routes to either the same way."""

    # Its settings live in its own replicas: whether it splits traffic is not known here, so
    # every request carries who sent it (a few short strings beside the payload).
    routes_callers = True

    def __init__(self, name: str, handle: DeploymentHandle):
        self.name, self.handle = name, handle

    async def infer(self, payload: Any, protocol: ApiProtocol, version: str | None,
                    label: str | None, caller: Caller | None = None) -> dict:
        try:
            return await self.handle.infer.remote(payload, protocol, version, label, caller)
        except BackPressureError as exc:
            # The deployment's queue is full (max_queued_requests): say so and when to come back,
            # instead of queueing without bound.
            raise OverloadError(f"model '{self.name}' is overloaded: {exc.message}",
                                retry_after_s=exc.retry_after_s, status=exc.status_code) from None

    async def status(self, version: str | None = None, label: str | None = None) -> dict:
        return await self.handle.status.remote(version, label)

    async def feedback(self, request_id: str, label: Any) -> dict:
        # Serve picks the replica: feedback is scored only where the answer was given
        return await self.handle.feedback.remote(request_id, label)


class Dataplane:
    """Base of the ingress deployment: models, request reading, predict, metrics."""

    def __init__(self, handles: dict[str, DeploymentHandle], config: dict[str, Any]):
        from ray.util import metrics

        self.config = ServeAppConfig.model_validate(config)
        hosted = list(self.config.hosted_in_ingress())
        observe = model_call_metrics() if hosted else None
        root = self.config.resolved_root()
        verifier = self.config.verifier()
        self.hosts = {name: ModelHost(name, root, self.config.max_rows_per_request, observe,
                                      verifier=verifier)
                      for name in hosted}
        self.models: dict[str, ModelHost | DeploymentModel] = {
            **{name: DeploymentModel(name, handle) for name, handle in handles.items()}, **self.hosts}
        self.keys = KeyChecker(self.config.resolved_keys_file(), self.config.resolved_api_keys())
        self.requests = metrics.Counter(
            "maas_requests_total", "HTTP requests by model, version, status and protocol",
            tag_keys=("model", "version", "status", "protocol"))
        self.latency = metrics.Histogram(
            "maas_request_latency_ms", "End-to-end request latency inside the server",
            boundaries=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000],
            tag_keys=("model", "version"))
        self.pending_counts = CountBuffer()
        self.json_arrays = JsonArrays()
        self._flusher: asyncio.Task | None = None
        self.audit_entries: list[dict[str, Any]] = []  # written once a second by the flusher

    def _model(self, name: str) -> ModelHost | DeploymentModel:
        if name not in self.models:
            served = ", ".join(sorted(self.models)) or "none"
            raise RequestError(f"model '{name}' is not served here (served models: {served})", status=404)
        return self.models[name]

    async def _read_body(self, request: Request) -> bytes:
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            raise RequestError(f"request bodies compressed with Content-Encoding {encoding!r} are not "
                               f"accepted; send the body uncompressed", status=415)
        declared = request.headers.get("content-length")
        limit = self.config.max_body_bytes
        if declared and declared.isdigit() and int(declared) > limit:
            raise RequestError(f"request body of {declared} bytes is over the {limit}-byte limit", status=413)
        body = await request.body()
        if len(body) > limit:
            raise RequestError(f"request body of {len(body)} bytes is over the {limit}-byte limit",
                               status=413)
        request.state.body = body  # for the audit trail, when payloads are on
        return body

    async def _read_json(self, request: Request) -> Any:
        return _parse_json(await self._read_body(request))

    async def _read_v1_rows(self, request: Request) -> tuple[Any, Format]:
        """A TF Serving body's rows and format: numbers straight into an array where the body is
        large and plain (``maas.serving.json_arrays``), else parsed and unwrapped in full."""
        body = await self._read_body(request)
        return self.json_arrays.v1_rows(body) or extract_rows(_parse_json(body))

    async def _status(self, name: str, version: str | None = None, label: str | None = None) -> dict:
        return raise_if_error(await self._model(name).status(version, label))

    async def _predict(self, request: Request, name: str, protocol: ApiProtocol, respond: Respond,
                       version: str | None = None, label: str | None = None) -> Response:
        started = time.perf_counter()
        try:
            result, context = await self._infer(request, name, protocol, version, label)
        except MaasError as exc:  # recorded here, answered by the one exception handler
            if isinstance(exc, OverloadError) and exc.retry_after_s is None:
                exc.retry_after_s = self.config.retry_after_s  # a host's own full queue
            self._record(name, "", exc.status, protocol, started)
            self._audit(request, name, "", exc.status, protocol, started, 0, context=None,
                        answer=str(exc).encode())
            raise
        body = respond(result, context)
        if isinstance(body, BinaryBody):
            response = binary_response(body.header, body.data, headers=result.get("lineage"))
        else:
            response = json_response(body, headers=result.get("lineage"))
        self._record(name, str(result["version"]), response.status_code, protocol, started)
        self._audit(request, name, str(result["version"]), response.status_code, protocol, started,
                    len(result["outputs"]), context, answer=response.body)
        return response

    def _audit(self, request: Request, name: str, version: str, status: int, protocol: ApiProtocol,
               started: float, rows: int, context: Any, answer: bytes | None = None) -> None:
        """Sample a prediction into the audit trail: every error, ``audit_sample_rate`` of the
        rest. Key id, never the key; the bodies only with ``audit_payloads`` (for an error, the
        answer is its message)."""
        rate = self.config.audit_error_rate if status >= 400 else self.config.audit_sample_rate
        if rate <= 0 or (rate < 1 and random.random() >= rate):
            return
        v2_id = context.request_id if isinstance(context, V2Reply) else None
        request_id = request.headers.get("x-request-id") or (
            v2_id if isinstance(v2_id, str) else uuid.uuid4().hex)
        self.audit_entries.append({
            "action": "prediction", "request_id": request_id,
            "key_id": self._key_id(request), "model": name, "version": version,
            "protocol": protocol, "status": status, "rows": rows,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            **(self._payloads(request, answer) if self.config.audit_payloads else {})})
        self._start_flusher()

    def _payloads(self, request: Request, answer: bytes | None) -> dict[str, Any]:
        from maas.audit import payload

        limit = self.config.audit_payload_max_bytes
        return {"request_body": payload(getattr(request.state, "body", None), limit),
                "response_body": payload(answer, limit)}

    @staticmethod
    def _key_id(request: Request) -> str | None:
        """The authorised key's id; for a refused request, the id its key claimed. (Read from the
        dict ``request.state`` keeps in the scope: ``hasattr(request.state, ...)`` costs an
        exception per request, and this runs for every audited prediction.)"""
        state = request.scope.get("state") or {}
        if "key_id" in state:
            return state["key_id"]
        return claimed_key_id(request.headers)

    async def _infer(self, request: Request, name: str, protocol: ApiProtocol, version: str | None,
                     label: str | None) -> tuple[dict[str, Any], Any]:
        request.state.key_id = self.keys.authorize(request.headers, name)
        model = self._model(name)
        if protocol == "v1":
            rows, context = await self._read_v1_rows(request)
        else:  # framed here (JSON, or JSON + binary tensor data); the host parses the tensors
            # against the version's own schema
            body, header_length = await self._read_body(request), request.headers.get(INFERENCE_HEADER)
            plain = self.json_arrays.v2_body(body) if header_length is None else None
            rows = plain or read_v2_body(body, header_length)
            context = v2_reply_options(rows)
        caller = self._caller(request, model) if model.routes_callers else None
        return raise_if_error(await model.infer(rows, protocol, version, label, caller)), context

    @staticmethod
    def _caller(request: Request, model: ModelHost | DeploymentModel) -> Caller:
        """Who sent the request, for a traffic split: its X-Request-ID (Serve's proxy or HAProxy
        sets one when the caller did not), its key id, its headers (copied for another process)."""
        headers = request.headers
        return Caller(headers.get("x-request-id"), getattr(request.state, "key_id", None),
                      headers if isinstance(model, ModelHost) else dict(headers))

    async def _feedback(self, request: Request, name: str) -> dict[str, Any]:
        """``POST /v1/models/{name}/feedback``: a client's true label for an earlier answer, by
        its request id; scored by the replica that gave the answer (a rollout's accuracy rule),
        and, with capture on, recorded next to the captured requests by whichever replica gets it
        (joined by request id when the capture is read for training)."""
        request.state.key_id = self.keys.authorize(request.headers, name)
        model = self._model(name)
        body = await self._read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("request_id"), str) or "label" not in body:
            raise RequestError('feedback must be {"request_id": "<the X-Request-ID of the answer>", '
                               '"label": <its true class, or a list of one per row>}')
        return raise_if_error(await model.feedback(body["request_id"], body["label"]))

    def _record(self, name: str, version: str, status: int, protocol: ApiProtocol, started: float) -> None:
        model = name if name in self.models else "_unknown"  # bound the tag's values
        tags = {"model": model, "version": version or "_none"}
        self.pending_counts.add({**tags, "status": str(status), "protocol": protocol})
        self.latency.observe((time.perf_counter() - started) * 1000, tags=tags)
        self._start_flusher()

    def _start_flusher(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_forever())

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._flush_counts()
            entries, self.audit_entries = self.audit_entries, []
            if entries:  # file I/O off the event loop
                await asyncio.to_thread(self._write_audit, entries)

    def _write_audit(self, entries: list[dict[str, Any]]) -> None:
        from maas.audit import audit_log, audit_root

        try:
            audit_log(audit_root(self.config.resolved_root())).extend(entries)
        except OSError as exc:
            logger.warning("%d audit entries not written: %s", len(entries), exc)

    def _flush_counts(self) -> None:
        for tags, count in self.pending_counts.drain():
            self.requests.inc(count, tags=tags)

    def __del__(self) -> None:  # Serve calls it on graceful shutdown: keep the last second's counts
        self._flush_counts()
        for host in getattr(self, "hosts", {}).values():  # and what capture has not written yet
            host.close_capture()
