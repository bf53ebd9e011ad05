import numpy as np
import pytest

from maas.data import DataSchema
from maas.errors import ConfigError, RequestError
from maas.schema import validate_config
from maas.serving.auth import check_api_key
from maas.serving.batching import predict_grouped, split_batch
from maas.serving.inputs import to_batch
from maas.serving.oip import parse_v2_inputs, v2_model_metadata, v2_response
from maas.serving.settings import ModelSettings, ServeAppConfig
from maas.serving.tfserving import extract_rows, tf_serving_metadata, tf_serving_status
from maas.serving.versions import ServingPlan, choose_version, plan_versions

SCHEMA = DataSchema(input_shape=(3,), classes=[0, 1])


def test_row_and_columnar_bodies() -> None:
    assert extract_rows({"instances": [[1, 2, 3]]}) == ([[1, 2, 3]], "row")
    assert extract_rows({"inputs": [[1, 2, 3]]}) == ([[1, 2, 3]], "columnar")
    assert extract_rows({"inputs": {"x": [[1, 2, 3]]}}) == ([[1, 2, 3]], "columnar")


@pytest.mark.parametrize("body, message", [
    ([1, 2], "must be a JSON object"),
    ({}, "exactly one of"),
    ({"instances": [], "inputs": []}, "exactly one of"),
    ({"inputs": {"a": [], "b": []}}, "has one input"),
])
def test_malformed_bodies(body, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        extract_rows(body)


def test_valid_rows_become_float32_batch() -> None:
    batch = to_batch([[1, 2, 3], [4, 5, 6.5]], SCHEMA, max_rows=10)
    assert batch.dtype == np.float32 and batch.shape == (2, 3)
    assert to_batch([{"inputs": [1, 2, 3]}], SCHEMA, 10).shape == (1, 3)


@pytest.mark.parametrize("rows, status, message", [
    ([], 400, "empty"),
    ("abc", 400, "must be a list"),
    ([[1, 2]], 400, "must have 3 features, got 2"),
    ([[1, 2, 3], [1, 2]], 400, "ragged"),
    ([[1, "x", 3]], 400, "row 0 holds 'x'"),
    ([[True, False, True]], 400, "row 0 holds True"),
    ([[1, 2, 3]] * 11, 413, "at most 10"),
    ([[1, 2, float("nan")]], 400, "NaN or infinity"),
    ([[[1, 2, 3]]], 400, "shape"),
])
def test_invalid_rows(rows, status: int, message: str) -> None:
    with pytest.raises(RequestError, match=message) as info:
        to_batch(rows, SCHEMA, max_rows=10)
    assert info.value.status == status


def test_split_batch_undoes_stacking() -> None:
    parts = split_batch(np.arange(6).reshape(6, 1), [1, 3, 2])
    assert [p.ravel().tolist() for p in parts] == [[0], [1, 2, 3], [4, 5]]


def test_tf_serving_status_shape() -> None:
    body = tf_serving_status([(3, "AVAILABLE", ""), (4, "AVAILABLE", "")])
    assert [entry["version"] for entry in body["model_version_status"]] == ["4", "3"]  # newest first
    assert body["model_version_status"][1] == {
        "version": "3", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}


def _settings(**values) -> ModelSettings:
    return ModelSettings.model_validate(values)


def test_version_policy_latest_and_specific() -> None:
    assert plan_versions("m", _settings(), [1, 2, 3]) == ServingPlan((3,), {}, 3)
    assert plan_versions("m", _settings(versions={"latest": 2}), [3, 1, 2]).versions == (2, 3)
    assert plan_versions("m", _settings(versions={"latest": 5}), [1, 2]).versions == (1, 2)
    plan = plan_versions("m", _settings(versions={"specific": [1, 3]}), [1, 2, 3])
    assert plan.versions == (1, 3) and plan.default == 3
    with pytest.raises(LookupError, match=r"no version 7 \(registered: \[1, 2, 3\]\)"):
        plan_versions("m", _settings(versions={"specific": [7]}), [1, 2, 3])
    with pytest.raises(LookupError, match="no registered version"):
        plan_versions("m", _settings(), [])


def test_labels_map_to_versions_and_bring_them_into_service() -> None:
    settings = _settings(labels={"stable": 2, "canary": "latest"}, default="stable")
    plan = plan_versions("m", settings, [1, 2, 3])
    assert plan == ServingPlan((2, 3), {"stable": 2, "canary": 3}, 2)
    # registry labels of picked versions count; the config's own labels win
    plan = plan_versions("m", _settings(versions={"latest": 2}, labels={"stable": 1}), [1, 2, 3],
                         {2: ["stable", "blue"], 3: ["green"]})
    assert plan.labels == {"stable": 1, "blue": 2, "green": 3} and plan.versions == (1, 2, 3)
    assert plan.default == 3  # a label-only version never becomes the default by accident
    with pytest.raises(LookupError, match="label 'old' of model 'm' names version 9"):
        plan_versions("m", _settings(labels={"old": 9}), [1, 2])
    with pytest.raises(LookupError, match="default label 'stable' .* names no version"):
        plan_versions("m", _settings(default="stable"), [1, 2])


@pytest.mark.parametrize("values, message", [
    ({"versions": {}}, "exactly one of"),
    ({"versions": {"latest": 1, "specific": [1]}}, "exactly one of"),
    ({"versions": {"latest": 0}}, "greater than or equal to 1"),
    ({"labels": {"123": 1}}, "pattern"),
    ({"version": 3}, "version: unknown key"),
    ({"poll_registry_s": -1}, "greater than or equal to 0"),
])
def test_model_settings_refuse_bad_values(values, message) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config(ModelSettings, values)


def test_requests_choose_a_served_version_by_number_label_or_default() -> None:
    plan = ServingPlan((2, 3), {"stable": 2}, 3)
    assert choose_version("m", plan) == 3
    assert choose_version("m", plan, version="2") == 2
    assert choose_version("m", plan, label="stable") == 2
    with pytest.raises(RequestError, match=r"version 1 is not served \(served versions: 2, 3\)") as err:
        choose_version("m", plan, version="1")
    assert err.value.status == 404
    with pytest.raises(RequestError, match=r"labelled 'canary' \(labels: stable=2\)"):
        choose_version("m", plan, label="canary")
    with pytest.raises(RequestError, match="not served"):
        choose_version("m", plan, version="../2")


class _FakeModel:
    def __init__(self, scale: float):
        self.scale, self.calls = scale, []

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(len(batch))
        return batch * self.scale


def test_a_batch_mixing_versions_makes_one_call_per_version_in_request_order() -> None:
    old, new = _FakeModel(1.0), _FakeModel(10.0)
    items = [(old, np.ones((2, 1))), (new, np.ones((1, 1))), (old, np.full((3, 1), 2.0))]
    seen = []
    outputs = predict_grouped(items, lambda model, rows: seen.append((model.scale, rows)))
    assert [o.ravel().tolist() for o in outputs] == [[1, 1], [10], [2, 2, 2]]
    assert old.calls == [5] and new.calls == [1] and seen == [(1.0, 5), (10.0, 1)]


def test_app_config_validation() -> None:
    with pytest.raises(ConfigError, match="models"):
        validate_config(ServeAppConfig, {"models": []})
    with pytest.raises(ConfigError, match="unique"):
        validate_config(ServeAppConfig, {"models": [{"name": "a"}, {"name": "a"}]})
    with pytest.raises(ConfigError, match=r"models\.0\.name"):
        validate_config(ServeAppConfig, {"models": [{"name": "../x"}]})
    assert ModelSettings().max_batch_size == 32


TEXT = DataSchema(input_shape=(), classes=["negative", "positive"], dtype="string")


def test_text_rows_must_be_strings() -> None:
    assert to_batch(["good film", "bad film"], TEXT, 10).tolist() == ["good film", "bad film"]
    with pytest.raises(RequestError, match="row 1 is int; this model takes one string per row"):
        to_batch(["good", 3], TEXT, 10)


def test_api_keys() -> None:
    check_api_key({}, [])  # none configured: open
    with pytest.raises(RequestError, match="missing API key") as missing:
        check_api_key({}, ["k1"])
    assert missing.value.status == 401
    with pytest.raises(RequestError, match="not accepted") as wrong:
        check_api_key({"authorization": "Bearer nope"}, ["k1"])
    assert wrong.value.status == 403
    check_api_key({"authorization": "Bearer k1"}, ["k1"])
    check_api_key({"x-api-key": "k2"}, ["k1", "k2"])


def test_api_keys_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAAS_API_KEYS", "a, b")
    config = ServeAppConfig(models=[{"name": "m"}], api_keys=["c"])
    assert config.resolved_api_keys() == ["c", "a", "b"]


def test_v2_inputs_flat_or_nested() -> None:
    tensor = {"name": "inputs", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}
    assert parse_v2_inputs({"inputs": [tensor]}, SCHEMA) == [[1, 2, 3], [4, 5, 6]]
    nested = {**tensor, "data": [[1, 2, 3], [4, 5, 6]]}
    assert parse_v2_inputs({"inputs": [nested]}, SCHEMA) == [[1, 2, 3], [4, 5, 6]]
    text = {"name": "inputs", "shape": [1], "datatype": "BYTES", "data": ["good"]}
    assert parse_v2_inputs({"inputs": [text]}, TEXT) == ["good"]


@pytest.mark.parametrize("body, message", [
    ({}, "non-empty 'inputs'"),
    ({"inputs": [{"name": "x"}]}, "lacks \\['shape', 'datatype', 'data'\\]"),
    ({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "BYTES", "data": ["a"]}]}, "datatype 'BYTES'"),
    ({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}, "input shape"),
    ({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3]}]}, "needs 6"),
    ({"inputs": [{"name": "x", "shape": "2x3", "datatype": "FP32", "data": []}]}, "shape must be"),
])
def test_v2_bad_requests(body: dict, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        parse_v2_inputs(body, SCHEMA)


def test_v2_and_tf_serving_bodies() -> None:
    out = v2_response("m", 3, np.ones((2, 2), dtype=np.float32), "req-1")
    assert out["model_version"] == "3" and out["id"] == "req-1"
    assert out["outputs"][0]["shape"] == [2, 2] and len(out["outputs"][0]["data"]) == 4
    status = {"name": "m", "version": 3, "state": "AVAILABLE", "schema": SCHEMA.to_dict(),
              "served_versions": [2, 3]}
    assert v2_model_metadata(status)["inputs"][0] == {"name": "inputs", "datatype": "FP32", "shape": [-1, 3]}
    assert v2_model_metadata(status)["versions"] == ["2", "3"]
    signature = tf_serving_metadata(status)["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["outputs"]["probabilities"]["tensor_shape"]["dim"][1]["size"] == "2"


def test_request_counts_are_summed_per_tag_set_until_drained() -> None:
    from maas.serving.metrics import CountBuffer

    counts = CountBuffer()
    counts.add({"model": "m", "status": "200"})
    counts.add({"status": "200", "model": "m"}, 2)
    counts.add({"model": "m", "status": "400"})
    assert sorted(counts.drain(), key=lambda c: c[0]["status"]) == [
        ({"model": "m", "status": "200"}, 3), ({"model": "m", "status": "400"}, 1)]
    assert counts.drain() == []


def test_ingress_settings_fall_back_per_model_and_refuse_unknown_names() -> None:
    from maas.serving.settings import ServeAppConfig, ingress_model_settings

    config = ServeAppConfig.model_validate({"models": [
        {"name": "a", "hosting": "ingress"},
        {"name": "b", "hosting": "ingress", "user_config": {"max_batch_size": 4}},
        {"name": "c"}]})
    settings = ingress_model_settings({"models": {"a": {"max_batch_size": 8}}}, config)
    assert {name: s.max_batch_size for name, s in settings.items()} == {"a": 8, "b": 4}
    assert ingress_model_settings(None, config)["a"].max_batch_size == 32  # defaults
    with pytest.raises(ValueError, match="settings for c, which the ingress does not host"):
        ingress_model_settings({"models": {"c": {}}}, config)
    with pytest.raises(ValueError, match="user_config of Ingress"):
        ingress_model_settings({"models": {"a": {"max_batch_size": 0}}}, config)
    with pytest.raises(ValueError, match="user_config of Ingress"):
        ingress_model_settings({"modles": {}}, config)
