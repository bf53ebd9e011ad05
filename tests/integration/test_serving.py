import numpy as np
import orjson
import pytest
import requests

from tests.conftest import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def endpoint(trained, tiny_job):
    from ray import serve

    from serve.app import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = build_app({"registry_root": tiny_job.registry.root, "models": [{"name": "digits_mlp"}]})
    serve.run(app, name="maas", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.delete("maas")


def _local_model(tiny_job):
    from maas.registry import Registry
    from maas.tfkeras import load_model

    registry = Registry(tiny_job.registry.root)
    return load_model(str(registry.fetch(registry.get("digits_mlp")) / "model.keras"))


def test_predictions_equal_the_models_own_output(endpoint, tiny_job) -> None:
    from maas.data import load_dataset

    rows = load_dataset(tiny_job.data).x_test[:16]
    reply = requests.post(f"{endpoint}/v1/models/digits_mlp:predict",
                          data=orjson.dumps({"instances": rows.tolist()}), timeout=30)
    assert reply.status_code == 200, reply.text
    served = np.asarray(reply.json()["predictions"])
    expected = np.asarray(_local_model(tiny_job)(rows, training=False))
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-6)


def test_columnar_inputs_answer_with_outputs(endpoint, tiny_job) -> None:
    rows = np.zeros((2, 8, 8)).tolist()
    reply = requests.post(f"{endpoint}/v1/models/digits_mlp:predict", json={"inputs": rows}, timeout=30)
    assert reply.status_code == 200
    assert np.asarray(reply.json()["outputs"]).shape == (2, 10)


def test_concurrent_requests_are_batched_and_answered_correctly(endpoint, tiny_job) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from maas.data import load_dataset

    rows = load_dataset(tiny_job.data).x_test[:40]
    expected = np.asarray(_local_model(tiny_job)(rows, training=False))

    def one(i: int) -> np.ndarray:
        reply = requests.post(f"{endpoint}/v1/models/digits_mlp:predict",
                              json={"instances": [rows[i].tolist()]}, timeout=30)
        return np.asarray(reply.json()["predictions"][0])

    with ThreadPoolExecutor(16) as pool:
        served = list(pool.map(one, range(len(rows))))
    np.testing.assert_allclose(np.stack(served), expected, rtol=1e-4, atol=1e-6)


def test_status_reports_version_and_state(endpoint) -> None:
    reply = requests.get(f"{endpoint}/v1/models/digits_mlp", timeout=30)
    assert reply.status_code == 200
    status = reply.json()["model_version_status"][0]
    assert status["version"] == "1" and status["state"] == "AVAILABLE"


@pytest.mark.parametrize("path, body, status, message", [
    ("digits_mlp", b"{not json", 400, "not valid JSON"),
    ("digits_mlp", b'{"instances": []}', 400, "empty"),
    ("digits_mlp", b'{"instances": [[1, 2, 3]]}', 400, "shape [8, 8]"),
    ("digits_mlp", b'{"rows": []}', 400, "exactly one of"),
    ("digits_mlp", b'{"instances": [[["a"]]]}', 400, "every value must be a number"),
    ("nope", b'{"instances": [[0]]}', 404, "not served here"),
])
def test_bad_requests_get_clear_4xx(endpoint, path, body, status, message) -> None:
    reply = requests.post(f"{endpoint}/v1/models/{path}:predict", data=body, timeout=30)
    assert reply.status_code == status
    assert message in reply.json()["error"]
    assert requests.get(f"{endpoint}/healthz", timeout=30).status_code == 200
