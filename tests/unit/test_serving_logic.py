import numpy as np
import pytest

from maas.config import ConfigError, validate_config
from maas.data import DataSchema
from maas.serving import (
    ModelSettings,
    RequestError,
    ServeAppConfig,
    extract_rows,
    split_batch,
    tf_serving_status,
    to_batch,
)

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
    body = tf_serving_status(3, "AVAILABLE")
    assert body["model_version_status"][0] == {
        "version": "3", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}


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
