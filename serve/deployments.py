"""Ray Serve deployments: ``ModelServer`` hosts one model in a deployment of its own (own replicas
and autoscaling), behind the HTTP ``Ingress``."""

from __future__ import annotations

from typing import Any

from ray import serve

from maas.serving.canary import Caller
from maas.serving.host import ModelHost
from maas.serving.protocol import ApiProtocol


def model_call_metrics() -> Any:
    """Batch-size and rows-predicted metrics, created once per replica process; returns the
    ``observe(model, rows)`` hook a ``ModelHost`` calls on every model call."""
    from ray.util import metrics

    batch_sizes = metrics.Histogram(
        "maas_batch_size", "Rows per model call after batching",
        boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024], tag_keys=("model", "version"))
    rows = metrics.Counter("maas_rows_predicted_total", "Rows predicted", tag_keys=("model", "version"))

    def observe(model: Any, count: int) -> None:
        tags = {"model": model.name, "version": str(model.version)}
        batch_sizes.observe(count, tags=tags)
        rows.inc(count, tags=tags)

    return observe


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.5})
class ModelServer:
    """Hosts the versions of one registered model that its ``user_config`` picks; batches rows
    from concurrent requests into one model call per version."""

    def __init__(self, model_name: str, registry_root: str, max_rows_per_request: int,
                 verify_key: str | None = None):
        from maas.artifacts.signing import Verifier

        self.host = ModelHost(model_name, registry_root, max_rows_per_request, model_call_metrics(),
                              verifier=Verifier.from_setting(verify_key))
        # No load here: Serve calls reconfigure(user_config) right after __init__ (build_app
        # always sets one), so the versions the config picks are the first and only ones loaded.

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Runs on every ``user_config`` change (``serve deploy``, ``python -m maas serve ...``),
        on every replica, without a restart. Requests keep being answered while it loads."""
        await self.host.configure(user_config)

    async def infer(self, payload: Any, protocol: ApiProtocol = "v1", version: str | None = None,
                    label: str | None = None, caller: Caller | None = None) -> dict[str, Any]:
        return await self.host.infer(payload, protocol, version, label, caller)

    async def feedback(self, request_id: str, label: Any) -> dict[str, Any]:
        return await self.host.feedback(request_id, label)

    async def status(self, version: str | None = None, label: str | None = None) -> dict[str, Any]:
        return await self.host.status(version, label)

    async def check_health(self) -> None:
        """Healthy while the replica answers: a model with no loadable version answers 503 with
        the reason and retries on its own; restarting the replica would not make it load."""

    def __del__(self) -> None:  # Serve calls it on graceful shutdown: write what capture holds
        host = getattr(self, "host", None)
        if host is not None:
            host.close_capture()
