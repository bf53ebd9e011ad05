"""Change what a running Serve application serves, the declarative way.

``python -m maas serve versions|rollback|refresh|show|rollout`` reads the live Serve config from the Ray
dashboard (the same API ``serve deploy`` uses, so the cluster's token authentication guards it),
changes one model's settings (its deployment's ``user_config``, or its entry in the Ingress's for a
model hosted in the ingress) and deploys it back. Serve then calls ``reconfigure`` on every
replica that hosts the model, and on replicas started later: each loads and warms the versions
now picked before they take traffic, and nothing restarts.

The admin HTTP routes (``serve/admin.py``) do the same from inside a replica. A replica cannot
change its deployment's ``user_config`` by itself (its own ``reconfigure`` would change that one
replica, and the next replica Serve starts would get the old settings), so they go to the Serve
controller, the actor behind the dashboard's Serve API: ``ServeController`` reads the live config
and deploys the changed one with the same two controller calls the dashboard makes
(``get_serve_instance_details``, ``apply_config``), and ``apply`` runs the same edit either way.

The config edits are pure functions of dicts, unit-tested without a cluster.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

from maas.errors import ClusterError, ConfigError
from maas.schema import validate_config
from maas.serving.settings import INGRESS, ModelEndpoint, ModelSettings, ServeAppConfig, resolve_settings
from maas.serving.versions import plan_versions

DEFAULT_DASHBOARD = "http://127.0.0.1:8265"


class ServeCtlError(ConfigError):
    """Something the user can fix: wrong app or model name, no version to roll back to, ..."""


def parse_versions(text: str) -> dict[str, Any]:
    """``latest``, ``latest:2`` or ``3,4`` -> a version policy."""
    text = text.strip()
    if text == "latest":
        return {"latest": 1}
    if text.startswith("latest:") and text[7:].isdigit() and int(text[7:]) >= 1:
        return {"latest": int(text[7:])}
    parts = [p.strip() for p in text.split(",")]
    if parts and all(p.isdigit() for p in parts):
        return {"specific": sorted({int(p) for p in parts})}
    raise ServeCtlError(f"--versions {text!r}: expected 'latest', 'latest:N' or version numbers "
                        "like '3' or '3,4'")


def parse_label(text: str) -> tuple[str, int | str | None]:
    """``stable=3``, ``canary=latest``, or ``stable=`` (remove the label)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ServeCtlError(f"--label {text!r}: expected NAME=VERSION, NAME=latest or NAME= (remove)")
    if value == "":
        return name, None
    if value == "latest":
        return name, value
    if not value.isdigit():
        raise ServeCtlError(f"--label {text!r}: the version must be a number or 'latest'")
    return name, int(value)


def live_config(details: dict[str, Any], app_name: str | None = None) -> dict[str, Any]:
    """The deployable Serve config (``serve deploy`` format) behind ``GET /api/serve/applications/``:
    the applications deployed from a config file. Serve leaves applications deployed from Python
    (``serve.run``) alone when a config is deployed, so they are left out; ``app_name`` (or, when
    not given, the only applications there are) must not be one of them."""
    applications, from_python = [], []
    for name, app in (details.get("applications") or {}).items():
        deployed = app.get("deployed_app_config")
        # "source" says how it was deployed last; a config checkpoint can outlive a serve.run
        if deployed and app.get("source", "declarative") == "declarative":
            applications.append(deployed)
        else:
            from_python.append(name)
    wanted = [app_name] if app_name is not None else ([] if applications else from_python)
    for name in wanted:
        if name in from_python:
            raise ServeCtlError(
                f"application '{name}' was deployed from Python (serve.run), not from a config "
                "file; redeploy it with `serve deploy configs/serve/<file>.yaml` to manage it here",
                status=409)
    if not applications:
        raise ServeCtlError("no Serve application is running on this cluster")
    config: dict[str, Any] = {"applications": applications}
    for key in ("proxy_location", "http_options"):
        if details.get(key) is not None:
            config[key] = details[key]
    return config


def _app(config: dict[str, Any], app_name: str) -> dict[str, Any]:
    for app in config["applications"]:
        if app.get("name") == app_name:
            return app
    names = ", ".join(a.get("name", "?") for a in config["applications"])
    raise ServeCtlError(f"no application named '{app_name}' (running: {names}); pass --app")


def _endpoint(app: dict[str, Any], app_name: str, model: str) -> dict[str, Any]:
    endpoints = (app.get("args") or {}).get("models", [])
    for endpoint in endpoints:
        if endpoint.get("name") == model:
            return endpoint
    raise ServeCtlError(f"application '{app_name}' serves no model '{model}' "
                        f"(models: {', '.join(e.get('name', '?') for e in endpoints) or 'none'})")


def _deployment(app: dict[str, Any], name: str, create: bool = False) -> dict[str, Any] | None:
    deployments = app.setdefault("deployments", []) if create else app.get("deployments") or []
    for deployment in deployments:
        if deployment.get("name") == name:
            return deployment
    if not create:
        return None
    deployments.append({"name": name})
    return deployments[-1]


def _hosted_in_ingress(endpoint: dict[str, Any]) -> bool:
    return endpoint.get("hosting") == "ingress"


def model_settings(config: dict[str, Any], app_name: str, model: str) -> ModelSettings:
    """The model's live settings, resolved as every replica resolves them
    (``maas.serving.settings.resolve_settings``): its live user_config (its deployment's, or its
    entry in the Ingress's), else the starting one in the app's args, else the defaults."""
    app = _app(config, app_name)
    raw_endpoint = _endpoint(app, app_name, model)
    if _hosted_in_ingress(raw_endpoint):
        user_config = (_deployment(app, INGRESS) or {}).get("user_config") or {}
        live = (user_config.get("models") or {}).get(model)
    else:
        live = (_deployment(app, model) or {}).get("user_config")
    endpoint = validate_config(ModelEndpoint, raw_endpoint, f"user_config of {model}")
    return resolve_settings(live, endpoint, f"user_config of {model}")


def with_settings(config: dict[str, Any], app_name: str, model: str,
                  changes: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` where ``model``'s settings have ``changes`` merged in (in its own
    deployment's user_config, or its entry in the Ingress's); the result is validated, so a bad
    change never reaches the cluster."""
    current = model_settings(config, app_name, model).model_dump(mode="json")
    merged = {**current, **changes}
    validate_config(ModelSettings, merged, f"user_config of {model}")
    updated = copy.deepcopy(config)
    app = _app(updated, app_name)
    if _hosted_in_ingress(_endpoint(app, app_name, model)):
        ingress = _deployment(app, INGRESS, create=True)
        user_config = dict(ingress.get("user_config") or {})
        user_config["models"] = {**(user_config.get("models") or {}), model: merged}
        ingress["user_config"] = user_config
    else:
        _deployment(app, model, create=True)["user_config"] = merged
    return updated


def registry_root(config: dict[str, Any], app_name: str, override: str | None = None) -> str:
    """The registry the app reads: ``--registry``, else its ``registry_root`` arg, else this
    shell's default ($MAAS_REGISTRY or ~/.maas/registry), which may differ from the cluster's."""
    args = _app(config, app_name).get("args") or {}
    return override or ServeAppConfig.model_validate(args).resolved_root()


def rollback_changes(settings: ModelSettings, registered: list[int], model: str,
                     to: int | None = None) -> dict[str, Any]:
    """Pin the model to the version before the one requests get now (or to ``to``). Pinning is
    what makes it stick: with ``latest``, the next poll would swap the newer version back in."""
    current = plan_versions(model, settings, registered).default
    if to is None:
        older = [v for v in registered if v < current]
        if not older:
            raise ServeCtlError(f"model '{model}' serves version {current}; no older version is "
                                f"registered to roll back to (registered: {registered})")
        to = older[-1]
    elif to not in registered:
        raise ServeCtlError(f"model '{model}' has no version {to} (registered: {registered})")
    changes: dict[str, Any] = {"versions": {"specific": [to]}}
    if settings.default is not None:  # the default label would still point at the new version
        changes["default"] = None
    return changes


def dashboard_address(address: str | None) -> str:
    address = address or os.environ.get("RAY_DASHBOARD_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address or not address.startswith(("http://", "https://")):
        return DEFAULT_DASHBOARD
    return address


class ServeApi(Protocol):
    """Where the live Serve config is read and deployed."""

    def details(self) -> dict[str, Any]: ...

    def deploy(self, config: dict[str, Any]) -> None: ...


class Dashboard:
    """The dashboard's Serve REST API (what ``serve deploy`` and the CLI use, from anywhere)."""

    def __init__(self, address: str | None = None):
        from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

        self.url = dashboard_address(address)
        self.client = ServeSubmissionClient(self.url)

    def details(self) -> dict[str, Any]:
        return _dashboard_call(self.url, self.client.get_serve_details)

    def deploy(self, config: dict[str, Any]) -> None:
        _dashboard_call(self.url, lambda: self.client.deploy_applications(config))


class ServeController:
    """The Serve controller itself, from a process already in the cluster (a replica): the
    calls the dashboard's Serve API makes on it, without the dashboard. Blocking: run it in a
    thread from async code."""

    def __init__(self) -> None:
        from ray.serve.context import _get_global_client

        self.client = _get_global_client()

    def details(self) -> dict[str, Any]:
        return self.client.get_serve_details()

    def deploy(self, config: dict[str, Any]) -> None:
        from ray.exceptions import RayTaskError
        from ray.serve.schema import ServeDeploySchema

        try:
            self.client.deploy_apps(ServeDeploySchema.model_validate(config))
        except RayTaskError as exc:  # the dashboard answers this one 400; the same message here
            raise ClusterError(f"the Serve controller refused the new config: {exc}") from None


def app_status(api: ServeApi, app_name: str) -> str:
    """The application's status as Serve reports it (RUNNING, DEPLOYING, DEPLOY_FAILED, ...)."""
    app = (api.details().get("applications") or {}).get(app_name)
    return app.get("status", "UNKNOWN") if app else "NOT_FOUND"


def wait_running(api: ServeApi, app_name: str, timeout_s: float, poll_s: float = 0.2) -> bool:
    """Whether the application is RUNNING again within ``timeout_s``: after a deploy, Serve marks
    it DEPLOYING at once and RUNNING when every replica has run ``reconfigure`` (for a version
    change: loaded and warmed it, or kept what it served and recorded why)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if app_status(api, app_name) == "RUNNING":
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


def apply(api: ServeApi | str | None, app_name: str, model: str, action: str, to: int | None = None,
          registry: str | None = None,
          edit: Callable[[ModelSettings], dict[str, Any]] | None = None,
          audit: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read the live config once, compute the change, deploy it; returns the new user_config.
    ``api``: a ``ServeApi``, or the dashboard's address (None: the default one). ``edit`` turns
    the current settings into the changes for ``versions``. ``audit``: more fields for the
    trail's entry (the admin routes add the key id and request id)."""
    from maas.registry import Registry

    api = Dashboard(api) if api is None or isinstance(api, str) else api
    config = live_config(api.details(), app_name)
    settings = model_settings(config, app_name, model)
    if action == "show":
        return settings.model_dump(mode="json", exclude_none=True)
    if action == "rollback":
        root = registry_root(config, app_name, registry)
        registered = Registry(root).versions(model)
        if not registered:
            raise ServeCtlError(f"model '{model}' has no version in the registry at {root}; if the "
                                "cluster uses another one, pass it: python -m maas --registry <root> ...")
        changes = rollback_changes(settings, registered, model, to)
    elif action == "refresh":
        changes = {"refresh": settings.refresh + 1}
    else:
        changes = edit(settings) if edit is not None else {}
    updated = with_settings(config, app_name, model, changes)
    api.deploy(updated)
    from maas.audit import audit_root, record

    record(audit_root(registry_root(config, app_name, registry)), "serve.settings_changed",
           app=app_name, model=model, command=action, changes=changes, **(audit or {}))
    return model_settings(updated, app_name, model).model_dump(mode="json", exclude_none=True)


def _dashboard_call(url: str, call: Callable[[], Any]) -> Any:
    """The dashboard's answer, or a ``ClusterError`` naming it when it is down or refuses us."""
    try:
        return call()
    except (ConnectionError, RuntimeError) as exc:  # what the Serve SDK raises for both
        raise ClusterError(f"could not reach the Ray dashboard at {url}: {exc}") from None


def version_changes(versions: str | None, labels: list[str], default: str | None,
                    poll_s: float | None, current: ModelSettings) -> dict[str, Any]:
    """The user_config changes that ``python -m maas serve versions`` asks for."""
    changes: dict[str, Any] = {}
    if versions is not None:
        changes["versions"] = parse_versions(versions)
    if labels:
        merged: dict[str, Any] = dict(current.labels)
        for text in labels:
            name, value = parse_label(text)
            if value is None:
                merged.pop(name, None)
            else:
                merged[name] = value
        changes["labels"] = merged
    if default is not None:
        changes["default"] = default or None  # "" clears it
    if poll_s is not None:
        changes["poll_registry_s"] = poll_s
    if not changes:
        raise ServeCtlError("nothing to change: give --versions, --label, --default or --poll")
    return changes


def abort_changes(settings: ModelSettings, model: str) -> dict[str, Any]:
    """``serve rollout NAME --abort``: the canary's weight to 0, so every request naming no
    version goes to the stable version. The rollout policy stays, shown as stopped; setting a
    weight again starts a new rollout."""
    if settings.rollout is None or settings.traffic is None:
        raise ServeCtlError(f"model '{model}' has no rollout to abort (its settings have no "
                            f"'rollout'; traffic: {settings.traffic})")
    canary, _ = settings.rollout_keys()
    return {"traffic": {**settings.traffic, canary: 0}}


def rollout_status(api: ServeApi | str | None, app_name: str, model: str,
                   registry: str | None = None) -> dict[str, Any]:
    """Where the model's rollout stands: its live traffic and rollout settings, the versions they
    name, and the decisions every replica shares (the one that holds, and all of them)."""
    from maas.registry import Registry
    from maas.serving.canary import Decision, furthest, rollout_id
    from maas.serving.host import registry_plan

    api = Dashboard(api) if api is None or isinstance(api, str) else api
    config = live_config(api.details(), app_name)
    settings = model_settings(config, app_name, model)
    policy = settings.rollout.model_dump(mode="json") if settings.rollout else None
    report: dict[str, Any] = {"model": model, "traffic": settings.traffic, "sticky": settings.sticky,
                              "rollout": policy}
    if settings.traffic is None:
        return report
    root = registry_root(config, app_name, registry)
    store = Registry(root)
    plan = registry_plan(store, model, settings)
    report["versions"] = {key: version for key, version, _ in plan.traffic}
    if settings.rollout is None:
        return report
    canary, stable = settings.rollout_keys()
    identity = rollout_id(model, settings, plan.traffic)
    decisions = sorted((Decision.from_dict(d) for d in store.rollout_decisions(model, identity)),
                       key=lambda d: (d.rank, d.time))
    start = settings.traffic[canary] / sum(settings.traffic.values()) * 100
    best = furthest(decisions)
    if start == 0:
        state, share = "stopped", 0.0
    elif best is None:
        steps = [s for s in settings.rollout.steps if s > start]
        state, share = ("running" if steps else "done"), start
    else:
        state, share = best.state, best.share
    upcoming = [s for s in settings.rollout.steps if s > share]
    report.update({"id": identity, "canary": canary, "stable": stable, "state": state,
                   "canary_share": share, "start_share": start,
                   "next_step": upcoming[0] if state == "running" and upcoming else None,
                   "decisions": [d.to_dict() for d in decisions]})
    return report


def render_rollout(report: dict[str, Any]) -> str:
    """``python -m maas serve rollout NAME`` for a person."""
    model = report["model"]
    if report.get("traffic") is None:
        return f"{model}: no traffic split (settings traffic) and so no rollout"
    versions = report.get("versions", {})
    split = ", ".join(f"{key}={weight:g}" + (f" (v{versions[key]})" if key in versions else "")
                      for key, weight in report["traffic"].items())
    lines = [f"{model}: traffic {split}" + (f"; sticky by {report['sticky']}" if report["sticky"] else "")]
    if report.get("rollout") is None:
        lines.append("no rollout policy: the split stays as configured")
        return "\n".join(lines)
    policy = report["rollout"]
    canary_version, stable_version = versions.get(report["canary"]), versions.get(report["stable"])
    state = report["state"]
    where = {"running": "running", "done": "done (promoted to its last step)",
             "rolled_back": "ROLLED BACK", "stopped": "stopped (canary weight 0)"}[state]
    lines.append(f"rollout {report['id']}: {where}: canary '{report['canary']}' (v{canary_version}) gets "
                 f"{report['canary_share']:g}% of requests naming no version, stable "
                 f"'{report['stable']}' (v{stable_version}) the rest"
                 + (f"; next step {report['next_step']:g}%" if report.get("next_step") else ""))
    steps = " -> ".join(f"{s:g}" for s in policy["steps"])
    increase = policy["max_error_rate_increase"] * 100
    lines.append(f"policy: steps {steps} from {report['start_share']:g}%, window {policy['window_s']:g} s, "
                 f"min {policy['min_requests']} requests, error rate +{increase:g} points, "
                 f"p99 {policy['max_p99_ratio']:g}x"
                 + (f", accuracy -{policy['max_accuracy_drop'] * 100:g} points"
                    if policy.get("max_accuracy_drop") is not None else ""))
    if not report["decisions"]:
        lines.append("decisions: none yet (each replica judges the canary every window)")
    else:
        lines.append("decisions:")
        lines += [f"  {d['time'] or '-'}  {d['share']:g}%  {d['state']}  {d['reason']}"
                  + (f"  [{d['replica']}]" if d.get("replica") else "") for d in report["decisions"]]
    return "\n".join(lines)
