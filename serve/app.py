"""The HTTP application: TensorFlow Serving REST routes over ``ModelServer`` deployments.

``build_app`` is the typed builder a Serve config file names (``import_path: serve.app:build_app``),
so ``serve run`` and ``serve deploy`` work with the files in ``configs/serve/`` unchanged.
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` class.
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from maas.config import validate_config
from maas.serving import (
    RequestError,
    ServeAppConfig,
    extract_rows,
    format_response,
    tf_serving_status,
)
from serve.deployments import ModelServer

http = FastAPI(title="maas model server", description="TensorFlow Serving REST API over Ray Serve")


def json_response(body: Any, status: int = 200) -> Response:  # orjson: numpy-aware, fast
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    media_type="application/json")


def error_response(message: str, status: int) -> Response:
    return json_response({"error": message}, status)


@http.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> Response:
    # Keep TF Serving's error shape for anything FastAPI rejects before our code runs.
    problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return error_response(f"invalid request: {problems}", 400)


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.25})
@serve.ingress(http)
class Ingress:
    def __init__(self, models: dict[str, DeploymentHandle]):
        self.models = models

    def _handle(self, name: str) -> DeploymentHandle:
        if name not in self.models:
            served = ", ".join(sorted(self.models)) or "none"
            raise RequestError(f"model '{name}' is not served here (served models: {served})", 404)
        return self.models[name]

    @http.get("/healthz")
    async def healthz(self) -> Response:
        return json_response({"status": "ok", "models": sorted(self.models)})

    @http.get("/v1/models/{name}")
    async def model_status(self, name: str) -> Response:
        try:
            status = await self._handle(name).status.remote()
        except RequestError as exc:
            return error_response(str(exc), exc.status)
        return json_response(tf_serving_status(status["version"], status["state"]))

    @http.post("/v1/models/{name}:predict")
    async def predict(self, name: str, request: Request) -> Response:
        try:
            handle = self._handle(name)
            body = await request.body()
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise RequestError(f"request body is not valid JSON: {exc}") from None
            rows, fmt = extract_rows(payload)
        except RequestError as exc:
            return error_response(str(exc), exc.status)
        result = await handle.infer.remote(rows)
        if "error" in result:
            return error_response(result["error"], result["status"])
        return json_response(format_response(result["outputs"], fmt))


def build_app(args: dict[str, Any]) -> serve.Application:
    """Typed app builder: validates ``args`` (see ``ServeAppConfig``) and wires one deployment per
    model; each deployment is named after its model so a Serve config can tune it by name."""
    config: ServeAppConfig = validate_config(ServeAppConfig, args, "serve application args")
    root = config.resolved_root()
    handles = {
        m.name: ModelServer.options(name=m.name).bind(m.name, root, config.max_rows_per_request)
        for m in config.models
    }
    return Ingress.bind(handles)
