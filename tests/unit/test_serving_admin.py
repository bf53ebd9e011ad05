"""What the admin routes accept and answer (maas/serving/admin.py) and the servectl parts they
share with `python -m maas serve`: bodies in the command line's words, the audit a key may read,
Triton's repository index, apps deployed from Python left alone, and the wait for replicas."""

import pytest

from maas.errors import ConfigError, RequestError
from maas.servectl import ServeCtlError, apply, live_config, wait_running
from maas.serving.admin import (
    AuditQuery,
    RepositoryLoadRequest,
    RollbackRequest,
    VersionsRequest,
    parse_audit_query,
    parse_body,
    repository_index,
    visible_entries,
)
from maas.serving.keys import ApiKey
from maas.serving.settings import ModelSettings


def test_bodies_use_the_command_lines_words() -> None:
    body = parse_body(VersionsRequest, b'{"versions": "latest:2", "label": ["canary=latest"], '
                                       b'"default": "stable", "poll": 5}')
    changes = body.changes(ModelSettings.model_validate({"labels": {"stable": 1}}))
    assert changes == {"versions": {"latest": 2}, "labels": {"stable": 1, "canary": "latest"},
                       "default": "stable", "poll_registry_s": 5}
    assert parse_body(RollbackRequest, b"").to is None and parse_body(RollbackRequest, b'{"to": 3}').to == 3
    with pytest.raises(ConfigError, match="nothing to change"):
        parse_body(VersionsRequest, b"{}").changes(ModelSettings())
    with pytest.raises(ConfigError, match="versions"):
        parse_body(VersionsRequest, b'{"versions": "newest"}').changes(ModelSettings())
    with pytest.raises(ConfigError, match="unknown key"):
        parse_body(RollbackRequest, b'{"version": 3}')
    with pytest.raises(ConfigError, match="parameters: unknown key"):
        parse_body(RepositoryLoadRequest, b'{"parameters": {"config": "{}"}}')
    with pytest.raises(RequestError, match="not valid JSON"):
        parse_body(RollbackRequest, b"{to: 3")


def test_the_audit_query_is_checked_and_a_scoped_key_reads_only_its_models() -> None:
    assert parse_audit_query({"model": "m", "limit": "5"}) == AuditQuery(model="m", limit=5)
    for bad in ({"limit": "0"}, {"limit": "many"}, {"modle": "m"}):
        with pytest.raises(ConfigError):
            parse_audit_query(bad)
    entries = [{"action": "key.created"}, {"action": "prediction", "model": "m"},
               {"action": "prediction", "model": "other"}, {"action": "model.published", "model": "m"}]
    scoped = ApiKey("k1", "sha256:x", ("m",), "admin")
    everything = ApiKey("k2", "sha256:y", ("*",), "admin")
    assert visible_entries(entries, scoped, 100) == [entries[1], entries[3]]
    assert visible_entries(entries, everything, 100) == entries
    assert visible_entries(entries, everything, 2) == entries[-2:]  # the newest


def test_repository_index_in_tritons_shape() -> None:
    statuses = {"b": {"served_versions": [2, 3]},
                "a": {"error": "model 'a' is unavailable", "status": 503, "kind": "unavailable"}}
    rows = repository_index(statuses, ready_only=False)
    unavailable = {"name": "a", "version": "", "state": "UNAVAILABLE", "reason": "model 'a' is unavailable"}
    assert rows == [unavailable,
                    {"name": "b", "version": "2", "state": "READY", "reason": ""},
                    {"name": "b", "version": "3", "state": "READY", "reason": ""}]
    assert [r["name"] for r in repository_index(statuses, ready_only=True)] == ["b", "b"]


def _details(**sources: str) -> dict:
    apps = {}
    for name, source in sources.items():
        config = {"name": name, "route_prefix": f"/{name}", "import_path": "serve.app:build_app",
                  "args": {"registry_root": "/r", "models": [{"name": "m", "hosting": "ingress"}]},
                  "deployments": [{"name": "Ingress"}]}
        apps[name] = {"status": "RUNNING", "source": source,
                      "deployed_app_config": config if source == "declarative" else None}
    return {"applications": apps}


def test_apps_deployed_from_python_are_left_out_and_cannot_be_changed() -> None:
    details = _details(files="declarative", python="imperative")
    assert [a["name"] for a in live_config(details)["applications"]] == ["files"]
    assert [a["name"] for a in live_config(details, "files")["applications"]] == ["files"]
    with pytest.raises(ServeCtlError, match="'python' was deployed from Python") as refused:
        live_config(details, "python")
    assert refused.value.status == 409
    # a config checkpoint that outlived a later serve.run of the same app is not used
    stale = _details(files="declarative")
    stale["applications"]["files"]["source"] = "imperative"
    with pytest.raises(ServeCtlError, match="deployed from Python"):
        live_config(stale, "files")


class FakeServe:
    """A ServeApi: the live details, what was deployed, and statuses to report in turn."""

    def __init__(self, details: dict, statuses: list[str] | None = None):
        self.live, self.deployed, self.statuses = details, [], list(statuses or [])

    def details(self) -> dict:
        if self.statuses:
            self.live["applications"]["files"]["status"] = self.statuses.pop(0)
        return self.live

    def deploy(self, config: dict) -> None:
        self.deployed.append(config)


def test_apply_deploys_through_any_serve_api_and_audits_who(tmp_path) -> None:
    from maas import audit

    details = _details(files="declarative", python="imperative")
    details["applications"]["files"]["deployed_app_config"]["args"]["registry_root"] = str(tmp_path)
    api = FakeServe(details)
    settings = apply(api, "files", "m", "refresh", audit={"key_id": "k1", "request_id": "r1"})
    assert settings["refresh"] == 1
    deployed, = api.deployed
    assert [a["name"] for a in deployed["applications"]] == ["files"]  # the Python app untouched
    ingress, = deployed["applications"][0]["deployments"]
    assert ingress["user_config"]["models"]["m"]["refresh"] == 1
    entry, = audit.entries(str(tmp_path), action="serve.settings_changed")
    assert entry["key_id"] == "k1" and entry["request_id"] == "r1" and entry["command"] == "refresh"


def test_wait_running_follows_the_apps_status() -> None:
    api = FakeServe(_details(files="declarative"), ["DEPLOYING", "DEPLOYING", "RUNNING"])
    assert wait_running(api, "files", timeout_s=5, poll_s=0)
    stuck = FakeServe(_details(files="declarative"), ["DEPLOYING"] * 1000)
    assert not wait_running(stuck, "files", timeout_s=0.05, poll_s=0.01)
