"""``python -m maas status``: one screen of what is running: cluster resources, jobs, served models."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

# Loggers that print INFO lines into a driver's terminal while we only read the cluster:
# Serve's ("Connecting to existing Serve app ...") and Ray's own.
QUIET_LOGGERS = ("ray.serve", "ray")


def collect(address: str | None) -> dict[str, Any]:
    import ray
    from ray import serve
    from ray.job_submission import JobSubmissionClient

    from maas.raycluster import init_ray

    with _quiet(QUIET_LOGGERS):
        # "auto": a status screen joins a running cluster, it never starts one
        init_ray(address or "auto", logging_level="ERROR", log_to_driver=False)
        context = ray.get_runtime_context()
        dashboard = _dashboard_url()
        jobs = JobSubmissionClient(dashboard).list_jobs() if dashboard else []
        return {
            "gcs": context.gcs_address,
            "dashboard": dashboard,
            "total": ray.cluster_resources(),
            "available": ray.available_resources(),
            "nodes": sum(1 for n in ray.nodes() if n["Alive"]),
            "jobs": visible_jobs(jobs, context.get_job_id()),
            "models": _served_models(serve),
        }


@contextmanager
def _quiet(names: Iterable[str]) -> Iterator[None]:
    """Raise ``names`` to ERROR while inside; their levels as they were afterwards."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def visible_jobs(jobs: Iterable[Any], own_job_id: str | None) -> list[Any]:
    """Submitted jobs (``ray job submit``), plus drivers started by hand that still run; never
    this command's own connection, which Ray lists as a running DRIVER job."""
    shown = []
    for job in jobs:
        kind = str(getattr(getattr(job, "type", None), "value", getattr(job, "type", "")))
        if job.job_id is not None and job.job_id == own_job_id:
            continue
        if kind == "DRIVER" and str(job.status.value) != "RUNNING":
            continue
        shown.append(job)
    return shown


def _dashboard_url() -> str | None:
    import ray

    url = ray._private.worker.global_worker.node.address_info.get("webui_url")  # noqa: SLF001
    return f"http://{url}" if url and not url.startswith("http") else url


def _served_models(serve: Any) -> list[dict[str, Any]]:
    try:
        applications = serve.status().applications
    except Exception:  # Serve not started on this cluster
        return []
    models = []
    for app_name, app in applications.items():
        for name, deployment in app.deployments.items():
            replicas = sum(deployment.replica_states.values()) if deployment.replica_states else 0
            handle = serve.get_deployment_handle(name, app_name=app_name)
            try:
                if name == "Ingress":  # the models it hosts itself (hosting: ingress)
                    statuses = handle.hosted_models.remote().result(timeout_s=10)
                else:
                    statuses = {name: handle.status.remote().result(timeout_s=10)}
            except Exception:  # replica starting or failing: show the deployment state only
                statuses = {} if name == "Ingress" else {name: None}
            for model, status in statuses.items():
                models.append(_model_row(app_name, model, str(deployment.status.value), replicas, status))
    return models


def _model_row(app: str, model: str, state: str, replicas: int,
               status: dict[str, Any] | None) -> dict[str, Any]:
    row = {"app": app, "model": model, "status": state, "replicas": replicas, "version": "-",
           "rate": None}
    if status is not None and "error" in status:  # e.g. no version of the model loads: say why
        row["status"] = f"{state} ({status['error']})"
    elif status is not None:
        # one replica's last minute, times the replicas: an estimate of the whole model's rate
        row["version"] = status["version"]
        row["rate"] = status["requests_last_minute"] / 60 * max(replicas, 1)
        rollout = status.get("rollout")
        if rollout:  # one replica's view; `python -m maas serve rollout NAME` has the decisions
            share = f" v{rollout['canary_version']} at {rollout['canary_share']:g}%" if (
                "canary_share" in rollout) else ""
            reason = (rollout.get("decisions") or [{}])[-1].get("reason") or rollout.get("reason", "")
            row["rollout"] = f"canary{share} {rollout['state']}: {reason}"[:120]
        capture = status.get("capture")
        if capture:  # this replica's capture: what it spooled, holds and dropped; what waits to compact
            row["capture"] = (f"{capture['rate']:g} of requests: {capture['written_rows']} rows spooled, "
                              f"{capture['buffered_rows']} buffered, {capture['dropped_requests']} "
                              f"requests dropped" + _spool_waiting(capture.get("spool") or {})
                              + (f", last error: {capture['last_error']}"
                                 if capture.get("last_error") else ""))[:200]
    return row


def _spool_waiting(spool: dict[str, Any]) -> str:
    """What waits in the machine's spool for the compactor, and why it waits (its last report)."""
    if not spool.get("files"):
        return ""
    why = (spool.get("compactor") or {}).get("why")
    return f", {spool['files']} spool files to compact" + (f" ({why})" if why else "")


def render(info: dict[str, Any]) -> str:
    total, available = info["total"], info["available"]
    lines = [f"cluster  {info['gcs']}  nodes={info['nodes']}  dashboard={info['dashboard']}"]
    for resource in ("CPU", "GPU", "memory"):
        if resource in total:
            used, whole = total[resource] - available.get(resource, 0), total[resource]
            scale, unit = (1 / 2**30, " GiB") if resource == "memory" else (1, "")
            lines.append(f"  {resource:<7} {used * scale:.1f}/{whole * scale:.1f}{unit} in use")
    lines.append("jobs")
    recent = sorted(info["jobs"], key=lambda j: j.start_time or 0, reverse=True)[:8]
    lines += [f"  {(j.submission_id or j.job_id or '-'):<28} {str(j.status.value):<10} {j.entrypoint[:60]}"
              for j in recent] or ["  none"]
    lines.append("served models")
    lines += [(f"  {m['model']:<20} v{m['version']!s:<4} replicas={m['replicas']:<2} {m['status']:<10} "
               f"~{m['rate']:.2f} req/s (last minute)" if m["rate"] is not None else
               f"  {m['model']:<20} v{m['version']!s:<4} replicas={m['replicas']:<2} {m['status']}")
              + (f"\n    rollout: {m['rollout']}" if m.get("rollout") else "")
              + (f"\n    capture: {m['capture']}" if m.get("capture") else "")
              for m in info["models"]] or ["  none"]
    return "\n".join(lines)
