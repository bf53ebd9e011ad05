"""The Serve application: the HTTP ``Ingress`` (TensorFlow Serving REST v1 and Open Inference
Protocol v2 routes over the models) and ``build_app``, the typed builder a Serve config file names
(``import_path: serve.app:build_app``), so ``serve run`` and ``serve deploy`` work with the files
in ``configs/serve/`` unchanged.

A request's path: HAProxy (or Serve's proxy) -> an ``Ingress`` replica -> the route
below -> ``Dataplane._predict`` in ``serve/dataplane.py`` (API key,
body, v1 envelope) -> the model's ``ModelHost``, in this replica or behind a handle to its own
``ModelServer`` deployment -> batch, model call -> back the same way.
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` class.
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from ray import serve

import maas
from maas.schema import validate_config
from maas.serving.oip import V2Reply, v2_model_metadata, v2_response
from maas.serving.oip_binary import BinaryBody, binary_outputs
from maas.serving.settings import (
    INGRESS,
    ModelEndpoint,
    ModelSettings,
    ServeAppConfig,
    ingress_model_settings,
)
from maas.serving.tfserving import format_response, tf_serving_metadata, tf_serving_status
from serve.admin import Admin
from serve.dataplane import Dataplane
from serve.deployments import ModelServer
from serve.http import FastRoutes, body_spec, http, json_response

ROW_BODY = {"type": "object", "properties": {
    "instances": {"type": "array", "description": "row format: one entry per example"},
    "inputs": {"description": "columnar format"}}}
V2_TENSOR = {"type": "object", "required": ["name", "shape", "datatype", "data"], "properties": {
    "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
    "datatype": {"type": "string"}, "data": {"type": "array"}}}
FEEDBACK_BODY = {"type": "object", "required": ["request_id", "label"], "properties": {
    "request_id": {"type": "string", "description": "the X-Request-ID of the answer"},
    "label": {"description": "its true class, or a list of one per row"}}}
V2_BODY = {"type": "object", "required": ["inputs"], "properties": {
    "id": {"type": "string"}, "inputs": {"type": "array", "items": V2_TENSOR}}}


def _v1_body(result: dict, fmt: Any) -> dict:
    return format_response(result["outputs"], fmt)


# The predict routes below, matched first, straight to their methods (``serve.http.FastRoutes``);
# the same paths as FastAPI's path templates match ({param}: one path segment, no "/").
http.add_middleware(FastRoutes, routes=[
    ("POST", r"^/v1/models/(?P<name>[^/]+):predict$",
     lambda self, request, name: self.predict(name, request)),
    ("POST", r"^/v1/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+):predict$",
     lambda self, request, name, version: self.predict_version(name, version, request)),
    ("POST", r"^/v1/models/(?P<name>[^/]+)/labels/(?P<label>[^/]+):predict$",
     lambda self, request, name, label: self.predict_label(name, label, request)),
    ("POST", r"^/v2/models/(?P<name>[^/]+)/infer$",
     lambda self, request, name: self.v2_infer(name, request)),
    ("POST", r"^/v2/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)/infer$",
     lambda self, request, name, version: self.v2_infer_version(name, version, request)),
])


@serve.deployment(name=INGRESS, max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.25})
@serve.ingress(http)
class Ingress(Dataplane, Admin):
    """Routes requests to each model: to its own ``ModelServer`` deployment, or to a
    ``ModelHost`` in this replica for models with ``hosting: ingress``; the admin routes
    (``serve/admin.py``) change what they serve."""

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Settings of the models hosted here (``IngressSettings``), applied live on every
        replica like a model deployment's: new versions load and warm while requests go on."""
        for name, settings in ingress_model_settings(user_config, self.config).items():
            await self.hosts[name].configure(settings)

    async def check_health(self) -> None:
        """Healthy while the replica answers. A hosted model with no loadable version is not a
        failed replica: it answers 503 with the reason and retries on its own, while a restart
        would not make it load and would take every other model and route down with it."""

    async def hosted_models(self) -> dict[str, dict]:
        """Status of each model hosted in this replica (``python -m maas status``)."""
        return {name: await host.status() for name, host in self.hosts.items()}

    @http.get("/healthz")
    async def healthz(self) -> Response:
        unavailable = {name: host.unavailable for name, host in self.hosts.items() if host.unavailable}
        return json_response({"status": "ok", "models": sorted(self.models), "unavailable": unavailable})

    # --- TensorFlow Serving REST (v1) ------------------------------------------------------

    @http.get("/v1/models/{name}")
    async def model_status(self, name: str) -> Response:
        status = await self._status(name)
        body = tf_serving_status([(v, "AVAILABLE", "") for v in status["served_versions"]])
        # a traffic split and its rollout, when configured (fields TF Serving clients ignore)
        body.update({key: status[key] for key in ("traffic", "rollout") if key in status})
        return json_response(body)

    @http.get("/v1/models/{name}/versions/{version}")
    async def model_version_status(self, name: str, version: str) -> Response:
        status = await self._status(name, version)
        return json_response(tf_serving_status([(status["version"], status["state"], "")]))

    @http.get("/v1/models/{name}/labels/{label}")
    async def model_label_status(self, name: str, label: str) -> Response:
        status = await self._status(name, label=label)
        return json_response(tf_serving_status([(status["version"], status["state"], "")]))

    @http.get("/v1/models/{name}/metadata")
    async def model_metadata(self, name: str) -> Response:
        return json_response(tf_serving_metadata(await self._status(name)))

    @http.post("/v1/models/{name}:predict", openapi_extra=body_spec(ROW_BODY))
    async def predict(self, name: str, request: Request) -> Response:
        return await self._predict(request, name, "v1", _v1_body)

    @http.post("/v1/models/{name}/versions/{version}:predict", openapi_extra=body_spec(ROW_BODY))
    async def predict_version(self, name: str, version: str, request: Request) -> Response:
        return await self._predict(request, name, "v1", _v1_body, version=version)

    @http.post("/v1/models/{name}/labels/{label}:predict", openapi_extra=body_spec(ROW_BODY))
    async def predict_label(self, name: str, label: str, request: Request) -> Response:
        return await self._predict(request, name, "v1", _v1_body, label=label)

    @http.post("/v1/models/{name}/feedback", openapi_extra=body_spec(FEEDBACK_BODY))
    async def feedback(self, name: str, request: Request) -> Response:
        """A true label for an earlier answer (``X-Request-ID``): scored against the version
        that gave it, for a canary rollout's accuracy rule."""
        return json_response(await self._feedback(request, name))

    # --- Open Inference Protocol (v2) ------------------------------------------------------

    @http.get("/v2")
    async def v2_server(self) -> Response:
        return json_response({"name": "maas", "version": maas.__version__,
                              "extensions": ["binary_tensor_data"]})

    @http.get("/v2/health/live")
    async def v2_live(self) -> Response:
        return json_response({"live": True})

    @http.get("/v2/health/ready")
    async def v2_ready(self) -> Response:
        # Ready when every model hosted here can answer (models in their own deployments report
        # through /v2/models/{name}/ready).
        return json_response({"ready": not any(host.unavailable for host in self.hosts.values())})

    @http.get("/v2/models/{name}")
    async def v2_metadata(self, name: str) -> Response:
        return json_response(v2_model_metadata(await self._status(name)))

    @http.get("/v2/models/{name}/versions/{version}")
    async def v2_version_metadata(self, name: str, version: str) -> Response:
        return json_response(v2_model_metadata(await self._status(name, version)))

    @http.get("/v2/models/{name}/ready")
    async def v2_model_ready(self, name: str) -> Response:
        status = await self._status(name)
        return json_response({"name": name, "ready": status["state"] == "AVAILABLE"})

    @http.get("/v2/models/{name}/versions/{version}/ready")
    async def v2_version_ready(self, name: str, version: str) -> Response:
        await self._status(name, version)
        return json_response({"name": name, "ready": True})

    @http.post("/v2/models/{name}/infer", openapi_extra=body_spec(V2_BODY))
    async def v2_infer(self, name: str, request: Request) -> Response:
        return await self._v2(request, name, None)

    @http.post("/v2/models/{name}/versions/{version}/infer", openapi_extra=body_spec(V2_BODY))
    async def v2_infer_version(self, name: str, version: str, request: Request) -> Response:
        return await self._v2(request, name, version)

    async def _v2(self, request: Request, name: str, version: str | None) -> Response:
        def respond(result: dict, reply: V2Reply) -> dict | BinaryBody:
            body = v2_response(name, result["version"], result["outputs"], reply.request_id)
            return binary_outputs(body, reply.binary) if reply.binary else body

        return await self._predict(request, name, "v2", respond, version=version)


def build_app(args: dict[str, Any]) -> serve.Application:
    """Typed app builder: validates ``args`` (see ``ServeAppConfig``) and wires one deployment per
    model with ``hosting: deployment``, named after its model so a Serve config can tune it by
    name; models with ``hosting: ingress`` live in the Ingress, tuned by its ``user_config``."""
    config = validate_config(ServeAppConfig, args, "serve application args")
    config.verifier()  # an unreadable verify_key fails the deploy here, not in every replica
    root = config.resolved_root()
    handles = {
        # A default user_config makes Serve call reconfigure(), where the model is loaded; the
        # Serve config file's user_config for the deployment replaces it.
        m.name: ModelServer.options(name=m.name, user_config=_user_config(m)).bind(
            m.name, root, config.max_rows_per_request, config.verify_key)
        for m in config.models if m.hosting == "deployment"
    }
    hosted = {name: _user_config(m) for name, m in config.hosted_in_ingress().items()}
    ingress = Ingress.options(user_config={"models": hosted}) if hosted else Ingress
    return ingress.bind(handles, config.model_dump(mode="json"))


def _user_config(model: ModelEndpoint) -> dict[str, Any]:
    return (model.user_config or ModelSettings()).model_dump(mode="json", exclude_none=True)
