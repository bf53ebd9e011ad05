"""The HTTP application: TensorFlow Serving REST (v1) and Open Inference Protocol (v2) routes over
``ModelServer`` deployments, with API keys, request limits and metrics.

``build_app`` is the typed builder a Serve config file names (``import_path: serve.app:build_app``),
so ``serve run`` and ``serve deploy`` work with the files in ``configs/serve/`` unchanged.
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` class.
import asyncio
import math
import time
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from maas.schema import validate_config
from maas.serving import (
    CountBuffer,
    ModelEndpoint,
    ModelSettings,
    RequestError,
    ServeAppConfig,
    check_api_key,
    extract_rows,
    format_response,
    ingress_model_settings,
    tf_serving_metadata,
    tf_serving_status,
    v2_model_metadata,
    v2_response,
)
from serve.deployments import ModelServer, model_call_metrics
from serve.hosting import ModelHost

ROW_BODY = {"type": "object", "properties": {
    "instances": {"type": "array", "description": "row format: one entry per example"},
    "inputs": {"description": "columnar format"}}}
V2_TENSOR = {"type": "object", "required": ["name", "shape", "datatype", "data"], "properties": {
    "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
    "datatype": {"type": "string"}, "data": {"type": "array"}}}
V2_BODY = {"type": "object", "required": ["inputs"], "properties": {
    "id": {"type": "string"}, "inputs": {"type": "array", "items": V2_TENSOR}}}


def _body_spec(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


http = FastAPI(title="maas model server",
               description="TensorFlow Serving REST (/v1) and Open Inference Protocol (/v2) over Ray Serve")


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # orjson: numpy-aware and several times faster than the standard json module
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    media_type="application/json", headers=headers)


def error_response(message: str, status: int, retry_after_s: float | None = None) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    if retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    return json_response({"error": message}, status, headers or None)


def _v1_body(result: dict, fmt: Any) -> dict:
    return format_response(result["outputs"], fmt)


@http.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> Response:
    # Keep the protocols' error shape for anything FastAPI rejects before our code runs.
    problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return error_response(f"invalid request: {problems}", 400)


class _DeploymentModel:
    """A model in a deployment of its own, behind the same two calls as an in-process
    ``ModelHost``, so the ingress routes to either the same way."""

    def __init__(self, handle: DeploymentHandle):
        self.handle = handle

    async def infer(self, payload: Any, protocol: str, version: str | None, label: str | None) -> dict:
        return await self.handle.infer.remote(payload, protocol, version, label)

    async def status(self, version: str | None = None, label: str | None = None) -> dict:
        return await self.handle.status.remote(version, label)


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.25})
@serve.ingress(http)
class Ingress:
    """Routes requests to each model: to its own ``ModelServer`` deployment (``handles``), or to a
    ``ModelHost`` in this replica for models with ``hosting: ingress``."""

    def __init__(self, handles: dict[str, DeploymentHandle], config: dict[str, Any]):
        from ray.util import metrics

        self.config = ServeAppConfig.model_validate(config)
        hosted = [m.name for m in self.config.models if m.hosting == "ingress"]
        observe = model_call_metrics() if hosted else None
        root = self.config.resolved_root()
        self.hosts = {name: ModelHost(name, root, self.config.max_rows_per_request, observe)
                      for name in hosted}
        self.models: dict[str, ModelHost | _DeploymentModel] = {
            **{name: _DeploymentModel(handle) for name, handle in handles.items()}, **self.hosts}
        self.api_keys = self.config.resolved_api_keys()
        self.requests = metrics.Counter(
            "maas_requests_total", "HTTP requests by model, version, status and route",
            tag_keys=("model", "version", "status", "route"))
        self.latency = metrics.Histogram(
            "maas_request_latency_ms", "End-to-end request latency inside the server",
            boundaries=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000],
            tag_keys=("model", "version"))
        self.pending_counts = CountBuffer()
        self._flusher: asyncio.Task | None = None

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Settings of the models hosted here (``IngressSettings``), applied live on every
        replica like a model deployment's: new versions load and warm while requests go on."""
        for name, settings in ingress_model_settings(user_config, self.config).items():
            await self.hosts[name].configure(settings)

    async def check_health(self) -> None:
        for host in self.hosts.values():
            await host.ensure_loaded()  # raises, so Serve restarts the replica, if nothing can load

    async def hosted_models(self) -> dict[str, dict]:
        """Status of each model hosted in this replica (``python -m maas status``)."""
        return {name: await host.status() for name, host in self.hosts.items()}

    # --- plumbing --------------------------------------------------------------------------

    def _model(self, name: str) -> ModelHost | _DeploymentModel:
        if name not in self.models:
            served = ", ".join(sorted(self.models)) or "none"
            raise RequestError(f"model '{name}' is not served here (served models: {served})", 404)
        return self.models[name]

    async def _read_json(self, request: Request) -> Any:
        declared = request.headers.get("content-length")
        limit = self.config.max_body_bytes
        if declared and declared.isdigit() and int(declared) > limit:
            raise RequestError(f"request body of {declared} bytes is over the {limit}-byte limit", 413)
        body = await request.body()
        if len(body) > limit:
            raise RequestError(f"request body of {len(body)} bytes is over the {limit}-byte limit", 413)
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise RequestError(f"request body is not valid JSON: {exc}") from None

    async def _status(self, name: str, version: str | None = None, label: str | None = None) -> dict:
        status = await self._model(name).status(version, label)
        if "error" in status:
            raise RequestError(status["error"], status["status"])
        return status

    async def _predict(self, request: Request, name: str, route: str, respond: Any,
                       version: str | None = None, label: str | None = None) -> Response:
        started = time.perf_counter()
        served_version = ""
        try:
            check_api_key(request.headers, self.api_keys)
            model = self._model(name)
            payload = await self._read_json(request)
            if route == "v1":
                rows, context = extract_rows(payload)
            else:  # the replica parses the tensor against the version's own schema
                rows, context = payload, payload.get("id") if isinstance(payload, dict) else None
            result = await model.infer(rows, route, version, label)
            if "error" in result:
                raise RequestError(result["error"], result["status"])
            served_version = str(result["version"])
            response = json_response(respond(result, context))
        except RequestError as exc:
            retry = self.config.retry_after_s if exc.status == 503 else None  # a host's full queue
            response = error_response(str(exc), exc.status, retry_after_s=retry)
        except BackPressureError as exc:
            # The model's queue is full (max_queued_requests): say so and when to come back,
            # instead of queueing without bound.
            response = error_response(f"model '{name}' is overloaded: {exc.message}", exc.status_code,
                                      retry_after_s=exc.retry_after_s or self.config.retry_after_s)
        self._record(name, served_version, response.status_code, route, started)
        return response

    def _record(self, name: str, version: str, status: int, route: str, started: float) -> None:
        model = name if name in self.models else "_unknown"  # bound the tag's values
        tags = {"model": model, "version": version or "_none"}
        self.pending_counts.add({**tags, "status": str(status), "route": route})
        self.latency.observe((time.perf_counter() - started) * 1000, tags=tags)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_counts_forever())

    async def _flush_counts_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._flush_counts()

    def _flush_counts(self) -> None:
        for tags, count in self.pending_counts.drain():
            self.requests.inc(count, tags=tags)

    def __del__(self) -> None:  # Serve calls it on graceful shutdown: keep the last second's counts
        self._flush_counts()

    async def _guard(self, coroutine: Any) -> Response:
        try:
            return json_response(await coroutine)
        except RequestError as exc:
            return error_response(str(exc), exc.status)

    # --- health ----------------------------------------------------------------------------

    @http.get("/healthz")
    async def healthz(self) -> Response:
        return json_response({"status": "ok", "models": sorted(self.models)})

    # --- TensorFlow Serving REST (v1) ------------------------------------------------------

    @http.get("/v1/models/{name}")
    async def model_status(self, name: str) -> Response:
        async def body() -> dict:
            status = await self._status(name)
            return tf_serving_status([(v, "AVAILABLE", "") for v in status["served_versions"]])
        return await self._guard(body())

    @http.get("/v1/models/{name}/versions/{version}")
    async def model_version_status(self, name: str, version: str) -> Response:
        async def body() -> dict:
            status = await self._status(name, version)
            return tf_serving_status([(status["version"], status["state"], "")])
        return await self._guard(body())

    @http.get("/v1/models/{name}/labels/{label}")
    async def model_label_status(self, name: str, label: str) -> Response:
        async def body() -> dict:
            status = await self._status(name, label=label)
            return tf_serving_status([(status["version"], status["state"], "")])
        return await self._guard(body())

    @http.get("/v1/models/{name}/metadata")
    async def model_metadata(self, name: str) -> Response:
        async def body() -> dict:
            return tf_serving_metadata(await self._status(name))
        return await self._guard(body())

    @http.post("/v1/models/{name}:predict", openapi_extra=_body_spec(ROW_BODY))
    async def predict(self, name: str, request: Request) -> Response:
        return await self._predict(request, name, "v1", _v1_body)

    @http.post("/v1/models/{name}/versions/{version}:predict", openapi_extra=_body_spec(ROW_BODY))
    async def predict_version(self, name: str, version: str, request: Request) -> Response:
        return await self._predict(request, name, "v1", _v1_body, version=version)

    @http.post("/v1/models/{name}/labels/{label}:predict", openapi_extra=_body_spec(ROW_BODY))
    async def predict_label(self, name: str, label: str, request: Request) -> Response:
        return await self._predict(request, name, "v1", _v1_body, label=label)

    # --- Open Inference Protocol (v2) ------------------------------------------------------

    @http.get("/v2")
    async def v2_server(self) -> Response:
        return json_response({"name": "maas", "version": "0.1.0", "extensions": []})

    @http.get("/v2/health/live")
    async def v2_live(self) -> Response:
        return json_response({"live": True})

    @http.get("/v2/health/ready")
    async def v2_ready(self) -> Response:
        return json_response({"ready": True})

    @http.get("/v2/models/{name}")
    async def v2_metadata(self, name: str) -> Response:
        async def body() -> dict:
            return v2_model_metadata(await self._status(name))
        return await self._guard(body())

    @http.get("/v2/models/{name}/versions/{version}")
    async def v2_version_metadata(self, name: str, version: str) -> Response:
        async def body() -> dict:
            return v2_model_metadata(await self._status(name, version))
        return await self._guard(body())

    @http.get("/v2/models/{name}/ready")
    async def v2_model_ready(self, name: str) -> Response:
        async def body() -> dict:
            status = await self._status(name)
            return {"name": name, "ready": status["state"] == "AVAILABLE"}
        return await self._guard(body())

    @http.get("/v2/models/{name}/versions/{version}/ready")
    async def v2_version_ready(self, name: str, version: str) -> Response:
        async def body() -> dict:
            await self._status(name, version)
            return {"name": name, "ready": True}
        return await self._guard(body())

    @http.post("/v2/models/{name}/infer", openapi_extra=_body_spec(V2_BODY))
    async def v2_infer(self, name: str, request: Request) -> Response:
        return await self._v2(request, name, None)

    @http.post("/v2/models/{name}/versions/{version}/infer", openapi_extra=_body_spec(V2_BODY))
    async def v2_infer_version(self, name: str, version: str, request: Request) -> Response:
        return await self._v2(request, name, version)

    async def _v2(self, request: Request, name: str, version: str | None) -> Response:
        def respond(result: dict, request_id: Any) -> dict:
            return v2_response(name, result["version"], result["outputs"], request_id)

        return await self._predict(request, name, "v2", respond, version=version)


def build_app(args: dict[str, Any]) -> serve.Application:
    """Typed app builder: validates ``args`` (see ``ServeAppConfig``) and wires one deployment per
    model with ``hosting: deployment``, named after its model so a Serve config can tune it by
    name; models with ``hosting: ingress`` live in the Ingress, tuned by its ``user_config``."""
    config: ServeAppConfig = validate_config(ServeAppConfig, args, "serve application args")
    root = config.resolved_root()
    handles = {
        # A default user_config makes Serve call reconfigure(), where the model is loaded; the
        # Serve config file's user_config for the deployment replaces it.
        m.name: ModelServer.options(name=m.name, user_config=_user_config(m)).bind(
            m.name, root, config.max_rows_per_request)
        for m in config.models if m.hosting == "deployment"
    }
    hosted = {m.name: _user_config(m) for m in config.models if m.hosting == "ingress"}
    ingress = Ingress.options(user_config={"models": hosted}) if hosted else Ingress
    return ingress.bind(handles, config.model_dump(mode="json"))


def _user_config(model: ModelEndpoint) -> dict[str, Any]:
    return (model.user_config or ModelSettings()).model_dump(mode="json", exclude_none=True)
