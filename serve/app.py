"""The Serve application: the HTTP ``Ingress`` (TensorFlow Serving REST v1 and Open Inference
Protocol v2 routes over the models) and ``build_app``, the typed builder a Serve config file names
(``import_path: serve.app:build_app``), so ``serve run`` and ``serve deploy`` work with the files
in ``configs/serve/`` unchanged.

A request's path: HAProxy (or Serve's proxy) -> an ``Ingress`` replica -> the route
(``protocol/v1_endpoints.py``, ``protocol/v2_endpoints.py``) -> ``Dataplane._predict`` (API key,
body, v1 envelope) -> the model's ``ModelHost``, in this replica or behind a handle to its own
``ModelServer`` deployment -> batch, model call -> back the same way.
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` class.
from typing import Any

from fastapi.responses import Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from maas.schema import validate_config
from maas.serving.settings import (
    INGRESS,
    ModelEndpoint,
    ModelSettings,
    ServeAppConfig,
    ingress_model_settings,
)
from serve.dataplane import Dataplane
from serve.deployments import ModelServer
from serve.http import http, json_response
from serve.protocol.v1_endpoints import V1Endpoints, v1
from serve.protocol.v2_endpoints import V2Endpoints, v2

http.include_router(v1)
http.include_router(v2)


@serve.deployment(name=INGRESS, max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.25})
@serve.ingress(http)
class Ingress(Dataplane, V1Endpoints, V2Endpoints):
    """Routes requests to each model: to its own ``ModelServer`` deployment, or to a
    ``ModelHost`` in this replica for models with ``hosting: ingress``."""

    def __init__(self, handles: dict[str, DeploymentHandle], config: dict[str, Any]):
        super().__init__(handles, config)

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

    @http.get("/healthz")
    async def healthz(self) -> Response:
        return json_response({"status": "ok", "models": sorted(self.models)})


def build_app(args: dict[str, Any]) -> serve.Application:
    """Typed app builder: validates ``args`` (see ``ServeAppConfig``) and wires one deployment per
    model with ``hosting: deployment``, named after its model so a Serve config can tune it by
    name; models with ``hosting: ingress`` live in the Ingress, tuned by its ``user_config``."""
    config = validate_config(ServeAppConfig, args, "serve application args")
    root = config.resolved_root()
    handles = {
        # A default user_config makes Serve call reconfigure(), where the model is loaded; the
        # Serve config file's user_config for the deployment replaces it.
        m.name: ModelServer.options(name=m.name, user_config=_user_config(m)).bind(
            m.name, root, config.max_rows_per_request)
        for m in config.models if m.hosting == "deployment"
    }
    hosted = {name: _user_config(m) for name, m in config.hosted_in_ingress().items()}
    ingress = Ingress.options(user_config={"models": hosted}) if hosted else Ingress
    return ingress.bind(handles, config.model_dump(mode="json"))


def _user_config(model: ModelEndpoint) -> dict[str, Any]:
    return (model.user_config or ModelSettings()).model_dump(mode="json", exclude_none=True)
