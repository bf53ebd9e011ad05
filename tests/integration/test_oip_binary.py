"""The Open Inference Protocol's binary tensor data extension through a real ``tritonclient.http``
client, for a model hosted in the ingress and in a deployment of its own (where the request's
bytes cross a Serve handle): binary inputs and outputs answer what the JSON request answers, and
malformed framing gets a clean 400."""

import numpy as np
import orjson
import pytest
import requests

pytestmark = pytest.mark.integration

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

HOSTINGS = ["ingress", "deployment"]
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def apps(serve_http, trained, tiny_job) -> dict[str, str]:
    """digits_mlp in the ingress and in its own deployment, one app each: host:port/prefix."""
    from ray import serve

    from serve.app import build_app

    urls = {}
    for hosting in HOSTINGS:
        app = build_app({"registry_root": tiny_job.registry.root, "max_body_bytes": MAX_BODY,
                         "models": [{"name": "digits_mlp", "hosting": hosting}]})
        serve.run(app, name=f"binary-{hosting}", route_prefix=f"/binary-{hosting}")
        urls[hosting] = f"{serve_http}/binary-{hosting}"
    yield urls
    for hosting in HOSTINGS:
        serve.delete(f"binary-{hosting}")


@pytest.fixture(scope="module")
def rows(tiny_job) -> np.ndarray:
    from maas.data import load_dataset

    return load_dataset(tiny_job.data).x_test[:5].astype(np.float32)


def _json_answer(url: str, rows: np.ndarray) -> np.ndarray:
    request = {"inputs": [{"name": "inputs", "shape": list(rows.shape), "datatype": "FP32",
                           "data": rows.reshape(-1).tolist()}]}
    reply = requests.post(f"http://{url}/v2/models/digits_mlp/infer", json=request, timeout=30)
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json", reply.text
    output = reply.json()["outputs"][0]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def _input(rows: np.ndarray, datatype: str = "FP32", binary: bool = True):
    tensor = httpclient.InferInput("inputs", list(rows.shape), datatype)
    tensor.set_data_from_numpy(rows, binary_data=binary)
    return tensor


@pytest.mark.parametrize("hosting", HOSTINGS)
def test_tritonclient_binary_tensors_answer_like_json(apps, rows, hosting) -> None:
    url = apps[hosting]
    expected = _json_answer(url, rows)
    client = httpclient.InferenceServerClient(url=url)
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    # tritonclient's defaults: binary inputs, every output binary
    result = client.infer("digits_mlp", [_input(rows)], request_id="b1")
    assert result.get_response()["id"] == "b1"
    assert result.get_output("probabilities")["parameters"]["binary_data_size"] == rows.shape[0] * 10 * 4
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=1e-6, atol=1e-7)
    # binary FP64 inputs, outputs in JSON
    as_json = httpclient.InferRequestedOutput("probabilities", binary_data=False)
    result = client.infer("digits_mlp", [_input(rows.astype(np.float64), "FP64")], outputs=[as_json])
    assert "data" in result.get_output("probabilities")
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=1e-6, atol=1e-7)
    # JSON inputs, binary outputs, a version named
    result = client.infer("digits_mlp", [_input(rows, binary=False)], model_version="1",
                          outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=True)])
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=1e-6, atol=1e-7)
    # an error the host finds comes back as tritonclient's exception, with our message
    with pytest.raises(InferenceServerException, match="does not fit this model's input shape"):
        client.infer("digits_mlp", [_input(rows.reshape(5, 64))])


def test_binary_answers_are_framed_as_triton_frames_them(apps, rows) -> None:
    header = orjson.dumps({"inputs": [{"name": "inputs", "shape": [1, 8, 8], "datatype": "FP32",
                                       "parameters": {"binary_data_size": 256}}],
                           "parameters": {"binary_data_output": True}})
    reply = requests.post(f"http://{apps['ingress']}/v2/models/digits_mlp/infer",
                          data=header + rows[:1].tobytes(), timeout=30,
                          headers={"Inference-Header-Content-Length": str(len(header)),
                                   "Content-Type": "application/octet-stream"})
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/octet-stream"
    size = int(reply.headers["inference-header-content-length"])
    answer = orjson.loads(reply.content[:size])
    assert answer["outputs"][0]["parameters"] == {"binary_data_size": 40}
    assert len(reply.content) == size + 40 and reply.headers["x-model-version"] == "1"


@pytest.mark.parametrize("hosting", HOSTINGS)
def test_malformed_binary_requests_get_a_clean_400(apps, rows, hosting) -> None:
    url = f"http://{apps[hosting]}/v2/models/digits_mlp/infer"
    header = orjson.dumps({"inputs": [{"name": "inputs", "shape": [2, 8, 8], "datatype": "FP32",
                                       "parameters": {"binary_data_size": 512}}]})
    data = rows[:2].tobytes()

    def post(body: bytes, length: int | None = len(header)) -> requests.Response:
        headers = {} if length is None else {"Inference-Header-Content-Length": str(length)}
        return requests.post(url, data=body, headers=headers, timeout=30)

    cases = [
        (post(header + data[:-8]), "504 bytes of binary tensor data follow the JSON header, but the "
                                   "inputs' binary_data_size add up to 512"),
        (post(header + data, len(header) + 600), "but the whole body is"),
        (post(header + data, None), "Inference-Header-Content-Length HTTP header"),
        (post(header + data, len(header) - 2), "are not valid JSON"),
        (post(header.replace(b'"FP32"', b'"FP64"') + data), "of FP64 needs 1024"),
    ]
    for reply, message in cases:
        assert reply.status_code == 400 and message in reply.json()["error"], reply.text
    too_big = np.zeros((300, 8, 8), dtype=np.float32)  # 76800 bytes of data past max_body_bytes
    client = httpclient.InferenceServerClient(url=apps[hosting])
    with pytest.raises(InferenceServerException, match="over the 65536-byte limit"):
        client.infer("digits_mlp", [_input(too_big)])
