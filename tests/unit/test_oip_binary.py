"""The Open Inference Protocol's binary tensor data extension without Ray: framing a body at the
ingress, decoding tensors against a schema at the host, encoding binary outputs, and a clean 400
for every malformed case."""

import asyncio
import pickle
import struct

import numpy as np
import orjson
import pytest

from maas.data import DataSchema
from maas.errors import RequestError
from maas.serving.inputs import to_batch
from maas.serving.oip import V2Reply, parse_v2_inputs, v2_reply_options, v2_response
from maas.serving.oip_binary import (
    WIRE_DTYPES,
    BinaryV2Request,
    binary_outputs,
    encode_binary_request,
    read_v2_body,
)

SCHEMA = DataSchema(input_shape=(2, 3), classes=[0, 1])
TEXT = DataSchema(input_shape=(), classes=["neg", "pos"], dtype="string")
ROWS = np.arange(12, dtype=np.float64).reshape(2, 2, 3) / 7


def tensor(datatype: str = "FP32", shape: list[int] | None = None, **extra) -> dict:
    return {"name": "inputs", "shape": shape or [2, 2, 3], "datatype": datatype, **extra}


def binary_body(datatype: str = "FP32", values=ROWS, **header) -> tuple[bytes, str]:
    body, size = encode_binary_request({"inputs": [tensor(datatype, list(np.shape(values)))], **header},
                                       {"inputs": values})
    return body, str(size)


def framed(header: dict, raw: bytes) -> tuple[bytes, str]:
    json_header = orjson.dumps(header)
    return json_header + raw, str(len(json_header))


# --- requests that decode ---------------------------------------------------------------------

@pytest.mark.parametrize("datatype", ["FP32", "FP64", "FP16", "INT32", "INT64", "UINT8", "INT8", "UINT16"])
def test_numeric_binary_tensors_decode_to_the_same_batch_as_json(datatype: str) -> None:
    values = (ROWS * 7).astype({"FP32": np.float32, "FP64": np.float64, "FP16": np.float16}.get(
        datatype, np.int64))
    body, size = binary_body(datatype, values)
    request = read_v2_body(body, size)
    assert isinstance(request, BinaryV2Request)
    assert len(request.buffers[0]) == 12 * np.dtype(WIRE_DTYPES[datatype]).itemsize
    rows = parse_v2_inputs(request, SCHEMA)
    assert isinstance(rows, np.ndarray) and rows.shape == (2, 2, 3)
    batch = to_batch(rows, SCHEMA, max_rows=8)
    as_json = {"inputs": [tensor(datatype, data=values.reshape(-1).tolist())]}
    expected = to_batch(parse_v2_inputs(as_json, SCHEMA), SCHEMA, max_rows=8)
    assert batch.dtype == np.float32
    np.testing.assert_array_equal(batch, expected)


def test_bytes_tensors_decode_to_strings_for_a_text_model() -> None:
    texts = ["good film", "", "très mauvais ☹"]
    body, size = encode_binary_request({"inputs": [tensor("BYTES", [3])]}, {"inputs": texts})
    rows = parse_v2_inputs(read_v2_body(body, str(size)), TEXT)
    assert rows == texts
    assert to_batch(rows, TEXT, 8).tolist() == texts


def test_a_body_with_no_binary_data_reads_as_plain_json() -> None:
    request = {"id": "r1", "inputs": [tensor(data=ROWS.reshape(-1).tolist())]}
    plain = orjson.dumps(request)
    assert read_v2_body(plain, None) == request
    assert read_v2_body(plain, str(len(plain))) == request  # the header given, nothing after it


def test_what_crosses_a_serve_handle_pickles_as_plain_bytes() -> None:
    body, size = binary_body()
    request = read_v2_body(body, size)
    again = pickle.loads(pickle.dumps(request))
    assert again == request and isinstance(again.buffers[0], bytes)
    np.testing.assert_array_equal(parse_v2_inputs(again, SCHEMA), ROWS.astype(np.float32))


def test_the_body_matches_what_tritonclient_sends() -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    inp = httpclient.InferInput("inputs", [2, 2, 3], "FP32")
    inp.set_data_from_numpy(ROWS.astype(np.float32), binary_data=True)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([inp])
    request = read_v2_body(body, str(json_size))
    assert isinstance(request, BinaryV2Request)
    np.testing.assert_array_equal(parse_v2_inputs(request, SCHEMA), ROWS.astype(np.float32))
    assert v2_reply_options(request).binary == {"probabilities"}  # tritonclient's default
    text = httpclient.InferInput("inputs", [2], "BYTES")
    text.set_data_from_numpy(np.array(["ok", "ça va"], dtype=object), binary_data=True)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([text])
    assert parse_v2_inputs(read_v2_body(body, str(json_size)), TEXT) == ["ok", "ça va"]


# --- malformed requests: a 400 that says what was wrong and what was expected ------------------

def _bad(body: bytes, size: str | None, schema: DataSchema = SCHEMA) -> str:
    with pytest.raises(RequestError) as caught:
        parse_v2_inputs(read_v2_body(body, size), schema)
    assert caught.value.status == 400
    return str(caught.value)


def test_header_length_must_be_a_number_within_the_body() -> None:
    body, size = binary_body()
    assert "must be the JSON header's length in bytes" in _bad(body, "twelve")
    assert "must be the JSON header's length in bytes" in _bad(body, "-5")
    message = _bad(body, str(len(body) + 1))
    assert f"is {len(body) + 1} bytes but the whole body is {len(body)} bytes" in message


def test_a_header_length_that_cuts_the_json_short_is_named() -> None:
    body, size = binary_body()
    message = _bad(body, str(int(size) - 3))
    assert f"first {int(size) - 3} bytes of the body" in message and "not valid JSON" in message


def test_sizes_must_account_for_every_byte_after_the_header() -> None:
    body, size = binary_body()
    message = _bad(body + b"\0" * 4, size)
    assert ("52 bytes of binary tensor data follow the JSON header, but the inputs' binary_data_size "
            "add up to 48 ('inputs': 48); they must account for every byte") in message
    assert "44 bytes of binary tensor data follow" in _bad(body[:-4], size)
    header = {"inputs": [tensor(data=[0] * 12)]}
    assert "no input has a binary_data_size" in _bad(*framed(header, b"\0" * 4))


def test_size_must_fit_shape_and_datatype() -> None:
    raw = ROWS.astype(np.float32).tobytes()
    body, size = framed({"inputs": [tensor("FP64", parameters={"binary_data_size": len(raw)})]}, raw)
    message = _bad(body, size)
    assert "binary_data_size of input 'inputs' is 48 bytes" in message
    assert "shape [2, 2, 3] of FP64 needs 96 (12 values of 8 bytes)" in message


@pytest.mark.parametrize("size_value, message", [
    (-1, "must be a whole number of bytes, got -1"),
    ("48", "must be a whole number of bytes, got '48'"),
    (True, "must be a whole number of bytes, got True"),
    (4.5, "must be a whole number of bytes, got 4.5"),
])
def test_binary_data_size_must_be_a_whole_number(size_value, message) -> None:
    body, size = framed({"inputs": [tensor(parameters={"binary_data_size": size_value})]}, b"x" * 48)
    assert message in _bad(body, size)


def test_parameters_must_be_an_object_and_data_sent_one_way() -> None:
    body, size = framed({"inputs": [tensor(parameters=[1])]}, b"")
    assert "parameters of input 'inputs' must be an object" in _bad(body, size)
    both = tensor(data=[0] * 12, parameters={"binary_data_size": 48})
    body, size = framed({"inputs": [both]}, b"\0" * 48)
    assert "has both 'data' and a binary_data_size" in _bad(body, size)


def test_binary_data_without_the_header_length_header_is_named() -> None:
    body, _ = binary_body()
    message = _bad(body, None)
    assert "not valid JSON" in message and "Inference-Header-Content-Length HTTP header" in message
    # the JSON alone, sizes declared but no bytes and no header
    header = {"inputs": [tensor(parameters={"binary_data_size": 48})]}
    message = _bad(orjson.dumps(header), None)
    assert "has a binary_data_size but the request has no Inference-Header-Content-Length" in message


def test_bytes_after_a_header_with_no_inputs_list() -> None:
    body, size = framed({"inputs": "x"}, b"\0" * 8)
    assert "8 bytes of binary tensor data follow the JSON header, but it has no 'inputs'" in _bad(body, size)


def test_binary_tensors_are_still_checked_against_the_schema() -> None:
    body, size = binary_body(values=np.zeros((2, 3, 2)))
    assert "does not fit this model's input shape [-1, 2, 3]" in _bad(body, size)
    body, size = binary_body("BYTES", ["a", "b"])
    assert "datatype 'BYTES' does not fit this model" in _bad(body, size)
    body, size = binary_body(values=np.full((1, 2, 3), np.nan))
    with pytest.raises(RequestError, match="NaN or infinity"):
        to_batch(parse_v2_inputs(read_v2_body(body, size), SCHEMA), SCHEMA, 8)
    body, size = binary_body(values=np.zeros((9, 2, 3)))
    with pytest.raises(RequestError, match="9 rows in one request; at most 8") as caught:
        to_batch(parse_v2_inputs(read_v2_body(body, size), SCHEMA), SCHEMA, 8)
    assert caught.value.status == 413


def _strings(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


@pytest.mark.parametrize("raw, shape, message", [
    (_strings(b"ok") + b"\1\0", [1], "more than the 1 BYTES elements shape [1] needs (2 bytes left over)"),
    (_strings(b"ok") + b"\1\0", [2], "ends inside the 4-byte length of BYTES element 1"),
    (struct.pack("<I", 10) + b"short", [1], "BYTES element 0 of input 'inputs' says it is 10 bytes but "
                                            "only 5 are left"),
    (_strings(b"a"), [2], "holds 1 BYTES elements, but shape [2] needs 2"),
    (_strings(b"\xff\xfe"), [1], "is not UTF-8 text"),
])
def test_malformed_bytes_elements(raw: bytes, shape: list[int], message: str) -> None:
    header = {"inputs": [tensor("BYTES", shape, parameters={"binary_data_size": len(raw)})]}
    body, size = framed(header, raw)
    assert message in _bad(body, size, TEXT)


# --- the answer ------------------------------------------------------------------------------

def test_reply_options_follow_the_extension() -> None:
    assert v2_reply_options({"id": "r", "inputs": []}) == V2Reply("r", frozenset())
    every = {"inputs": [], "parameters": {"binary_data_output": True}}
    assert v2_reply_options(every).binary == {"probabilities"}
    named = {"inputs": [], "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}
    assert v2_reply_options(named).binary == {"probabilities"}
    override = {**every, "outputs": [{"name": "probabilities", "parameters": {"binary_data": False}}]}
    assert v2_reply_options(override).binary == frozenset()
    assert v2_reply_options({**every, "outputs": [{"name": "probabilities"}]}).binary == {"probabilities"}
    assert v2_reply_options([1, 2]) == V2Reply()


@pytest.mark.parametrize("body, message", [
    ({"outputs": [{"name": "logits"}]}, "unknown output 'logits' requested; this model has one output, "
                                        "'probabilities'"),
    ({"outputs": {"name": "probabilities"}}, "outputs must be a list"),
    ({"parameters": {"binary_data_output": "yes"}}, "binary_data_output of request parameters must be "
                                                    "true or false"),
    ({"outputs": [{"name": "probabilities", "parameters": {"binary_data": 1}}]}, "must be true or false"),
    ({"parameters": "binary"}, "request parameters must be an object"),
])
def test_bad_reply_options(body: dict, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        v2_reply_options({"inputs": [], **body})


def test_binary_outputs_carry_their_size_and_bytes() -> None:
    outputs = np.linspace(0, 1, 20, dtype=np.float32).reshape(2, 10)
    body = binary_outputs(v2_response("m", 3, outputs, "r1"), frozenset({"probabilities"}))
    header = orjson.loads(body.header)
    assert header["id"] == "r1" and header["model_version"] == "3"
    (output,) = header["outputs"]
    assert "data" not in output and output["parameters"] == {"binary_data_size": 80}
    assert output["shape"] == [2, 10] and output["datatype"] == "FP32"
    np.testing.assert_array_equal(np.frombuffer(body.data, "<f4").reshape(2, 10), outputs)
    httpclient = pytest.importorskip("tritonclient.http")
    result = httpclient.InferenceServerClient.parse_response_body(
        body.header + body.data, header_length=len(body.header))
    np.testing.assert_array_equal(result.as_numpy("probabilities"), outputs)


def test_a_host_answers_a_binary_request_like_the_json_one() -> None:
    from tests.unit.test_serve_hosting import FakeRegistryHost

    async def scenario() -> None:
        host = FakeRegistryHost([1])
        rows = np.ones((3, 2), dtype=np.float32)
        body, size = encode_binary_request({"inputs": [tensor(shape=[3, 2])]}, {"inputs": rows})
        binary = await host.infer(read_v2_body(body, str(size)), "v2")
        plain = await host.infer({"inputs": [tensor(shape=[3, 2], data=rows.reshape(-1).tolist())]}, "v2")
        np.testing.assert_array_equal(binary["outputs"], plain["outputs"])
        short, size = encode_binary_request({"inputs": [tensor(shape=[3, 2])]}, {"inputs": rows[:2]})
        header = orjson.loads(short[:int(size)])
        header["inputs"][0]["shape"] = [3, 2]
        wrong = await host.infer(read_v2_body(*framed(header, short[int(size):])), "v2")
        assert wrong["status"] == 400 and "is 16 bytes, but shape [3, 2] of FP32 needs 24" in wrong["error"]

    asyncio.run(scenario())
