"""The config edits behind `python -m maas serve ...`, without a cluster."""

import pytest

from maas.errors import ConfigError
from maas.servectl import (
    ServeCtlError,
    live_config,
    model_settings,
    parse_label,
    parse_versions,
    registry_root,
    rollback_changes,
    version_changes,
    with_settings,
)
from maas.serving.settings import ModelSettings

DETAILS = {
    "proxy_location": "EveryNode",
    "http_options": {"host": "127.0.0.1", "port": 8000},
    "applications": {"maas": {"deployed_app_config": {
        "name": "maas", "route_prefix": "/", "import_path": "serve.app:build_app",
        "args": {"registry_root": "/r", "models": [{"name": "digits_mlp"}, {"name": "other"}]},
        "deployments": [{"name": "Ingress", "num_replicas": 1},
                        {"name": "digits_mlp", "user_config": {"versions": {"latest": 1},
                                                               "max_batch_size": 16}}],
    }}},
}


def test_versions_and_labels_parse() -> None:
    assert parse_versions("latest") == {"latest": 1}
    assert parse_versions("latest:3") == {"latest": 3}
    assert parse_versions("4, 3") == {"specific": [3, 4]}
    for bad in ("newest", "latest:0", "3,x", ""):
        with pytest.raises(ServeCtlError, match="expected 'latest'"):
            parse_versions(bad)
    assert parse_label("stable=3") == ("stable", 3)
    assert parse_label("canary=latest") == ("canary", "latest")
    assert parse_label("old=") == ("old", None)
    with pytest.raises(ServeCtlError, match="NAME=VERSION"):
        parse_label("stable")


def test_live_config_round_trips_the_deployed_files_and_refuses_python_apps() -> None:
    config = live_config(DETAILS)
    assert config["applications"][0]["import_path"] == "serve.app:build_app"
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8000}
    with pytest.raises(ServeCtlError, match="deployed from Python"):
        live_config({"applications": {"x": {"deployed_app_config": None}}})
    with pytest.raises(ServeCtlError, match="no Serve application"):
        live_config({"applications": {}})


def test_changes_merge_into_one_deployment_and_are_validated() -> None:
    config = live_config(DETAILS)
    updated = with_settings(config, "maas", "digits_mlp", {"versions": {"specific": [2]}})
    settings = model_settings(updated, "maas", "digits_mlp")
    assert settings.versions.specific == [2] and settings.max_batch_size == 16  # rest kept
    assert model_settings(config, "maas", "digits_mlp").versions.latest == 1  # input untouched
    # a model without user_config in the file gets a deployment entry of its own
    other = with_settings(config, "maas", "other", {"poll_registry_s": 5})
    assert model_settings(other, "maas", "other").poll_registry_s == 5
    with pytest.raises(ConfigError, match="max_batch_size"):
        with_settings(config, "maas", "digits_mlp", {"max_batch_size": 0})
    with pytest.raises(ServeCtlError, match=r"serves no model 'nope' \(models: digits_mlp, other\)"):
        with_settings(config, "maas", "nope", {})
    with pytest.raises(ServeCtlError, match="no application named 'x'"):
        with_settings(config, "x", "digits_mlp", {})


def _ingress_hosted(ingress_user_config: dict | None) -> dict:
    app = {"name": "maas", "route_prefix": "/", "import_path": "serve.app:build_app",
           "args": {"models": [{"name": "a", "hosting": "ingress"},
                               {"name": "b", "hosting": "ingress",
                                "user_config": {"max_batch_size": 4}},
                               {"name": "c"}]},
           "deployments": [{"name": "Ingress", "num_replicas": 1}]}
    if ingress_user_config is not None:
        app["deployments"][0]["user_config"] = ingress_user_config
    return {"applications": [app]}


def test_models_hosted_in_the_ingress_are_edited_in_the_ingress_user_config() -> None:
    config = _ingress_hosted({"models": {"a": {"max_batch_size": 8, "versions": {"latest": 2}}}})
    assert model_settings(config, "maas", "a").max_batch_size == 8
    assert model_settings(config, "maas", "b").max_batch_size == 4  # from the app's args
    updated = with_settings(config, "maas", "a", {"versions": {"specific": [1]}})
    ingress, = [d for d in updated["applications"][0]["deployments"] if d["name"] == "Ingress"]
    assert ingress["num_replicas"] == 1 and set(ingress["user_config"]["models"]) == {"a"}
    assert ingress["user_config"]["models"]["a"]["max_batch_size"] == 8  # rest kept
    assert model_settings(updated, "maas", "a").versions.specific == [1]
    # no model deployment named after an ingress-hosted model appears
    assert [d["name"] for d in updated["applications"][0]["deployments"]] == ["Ingress"]
    # a second hosted model is added beside the first; the one with its own deployment apart
    both = with_settings(updated, "maas", "b", {"poll_registry_s": 5})
    settings_b = model_settings(both, "maas", "b")
    assert settings_b.poll_registry_s == 5 and settings_b.max_batch_size == 4
    assert model_settings(both, "maas", "a").versions.specific == [1]
    own = with_settings(both, "maas", "c", {"max_batch_size": 2})
    assert [d["name"] for d in own["applications"][0]["deployments"]] == ["Ingress", "c"]


def test_an_ingress_without_user_config_gets_one() -> None:
    updated = with_settings(_ingress_hosted(None), "maas", "a", {"refresh": 1})
    assert updated["applications"][0]["deployments"][0]["user_config"]["models"]["a"]["refresh"] == 1


def test_rollback_pins_the_version_before_the_default() -> None:
    latest = ModelSettings()
    assert rollback_changes(latest, [1, 2, 3], "m") == {"versions": {"specific": [2]}}
    pinned = ModelSettings.model_validate({"versions": {"specific": [2]}})
    assert rollback_changes(pinned, [1, 2, 3], "m") == {"versions": {"specific": [1]}}
    assert rollback_changes(latest, [1, 2, 3], "m", to=1) == {"versions": {"specific": [1]}}
    labelled = ModelSettings.model_validate({"labels": {"stable": 3}, "default": "stable"})
    assert rollback_changes(labelled, [1, 2, 3], "m") == {"versions": {"specific": [2]}, "default": None}
    with pytest.raises(ServeCtlError, match="no older version"):
        rollback_changes(latest, [1], "m")
    with pytest.raises(ServeCtlError, match="no version 9"):
        rollback_changes(latest, [1, 2], "m", to=9)


def test_version_command_changes() -> None:
    current = ModelSettings.model_validate({"labels": {"stable": 1, "old": 1}})
    changes = version_changes("latest:2", ["canary=latest", "old="], "stable", 10, current)
    assert changes == {"versions": {"latest": 2}, "labels": {"stable": 1, "canary": "latest"},
                       "default": "stable", "poll_registry_s": 10}
    assert version_changes(None, [], "", None, current) == {"default": None}
    with pytest.raises(ServeCtlError, match="nothing to change"):
        version_changes(None, [], None, None, current)


def test_rollback_reads_the_registry_the_app_names_unless_told_otherwise(monkeypatch) -> None:
    config = live_config(DETAILS)
    assert registry_root(config, "maas") == "/r"
    assert registry_root(config, "maas", "s3://b/registry") == "s3://b/registry"
    del config["applications"][0]["args"]["registry_root"]
    monkeypatch.setenv("MAAS_REGISTRY", "/from/env")
    assert registry_root(config, "maas") == "/from/env"


def test_servectl_resolves_settings_in_the_order_replicas_do() -> None:
    """Ingress entry, else the app args' user_config, else defaults: the command line and the
    replicas call the same resolve_settings, so what `serve show` prints is what replicas use."""
    from maas.serving.settings import ServeAppConfig, ingress_model_settings

    args = {"models": [{"name": "a", "hosting": "ingress"},
                       {"name": "b", "hosting": "ingress", "user_config": {"max_batch_size": 4}},
                       {"name": "c", "hosting": "ingress"}]}
    ingress_user_config = {"models": {"a": {"max_batch_size": 8}}}
    config = {"applications": [{"name": "maas", "args": args, "deployments": [
        {"name": "Ingress", "user_config": ingress_user_config}]}]}
    replicas = ingress_model_settings(ingress_user_config, ServeAppConfig.model_validate(args))
    for name in ("a", "b", "c"):
        assert model_settings(config, "maas", name) == replicas[name]
    assert [replicas[n].max_batch_size for n in ("a", "b", "c")] == [8, 4, 32]
