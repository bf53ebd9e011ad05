"""Open Inference Protocol (v2): JSON tensors ``{name, shape, datatype, data}`` in and out, and
model metadata, as KServe and Triton clients expect them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from maas.data import DataSchema
from maas.errors import RequestError
from maas.serving.oip_binary import INFERENCE_HEADER, BinaryV2Request, binary_data_size, decode_binary_tensor

V2_NUMERIC = {"FP32", "FP64", "FP16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
              "UINT64"}
OUTPUT = "probabilities"  # every model's one output tensor


def parse_v2_inputs(body: Any, schema: DataSchema) -> list[Any] | np.ndarray:
    """The rows of a V2 infer request, as nested lists for ``to_batch`` to validate; an array of
    the tensor's shape when it came as binary data (``BinaryV2Request``, see ``oip_binary``)."""
    return parse_v2_tensor(body, schema, numeric_arrays=False)


def parse_v2_tensor(body: Any, schema: DataSchema, numeric_arrays: bool = True) -> list[Any] | np.ndarray:
    """``parse_v2_inputs``, with JSON data that is all numbers (the usual case) parsed straight
    into one array of the tensor's shape (``numeric_arrays``): what the serving path calls."""
    buffers: tuple[bytes | None, ...] = ()
    if isinstance(body, BinaryV2Request):
        body, buffers = body.header, body.buffers
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise RequestError("request body must be a JSON object with a non-empty 'inputs' list of tensors")
    if len(body["inputs"]) != 1:
        raise RequestError(f"this model has one input, 'inputs'; got {len(body['inputs'])} tensors")
    tensor = body["inputs"][0]
    if not isinstance(tensor, dict):
        raise RequestError("each input tensor must be an object with name, shape, datatype and data")
    raw = buffers[0] if buffers else None
    if raw is None and binary_data_size(tensor) is not None:
        raise RequestError(f"input {tensor.get('name')!r} has a binary_data_size but the request has no "
                           f"{INFERENCE_HEADER} header; binary tensor data must follow a JSON header of "
                           f"that many bytes")
    missing = [key for key in ("name", "shape", "datatype", "data")
               if key not in tensor and (key != "data" or raw is None)]
    if missing:
        raise RequestError(f"input tensor lacks {missing}; expected name, shape, datatype, data "
                           f"(or parameters.binary_data_size with binary data)")
    shape, datatype = tensor["shape"], tensor["datatype"]
    if not isinstance(shape, list) or not shape or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise RequestError(f"shape must be a list of non-negative integers, got {shape!r}")
    wanted = "BYTES" if schema.string_input else "FP32 (or another numeric type)"
    if (datatype == "BYTES") != schema.string_input or (datatype != "BYTES" and datatype not in V2_NUMERIC):
        raise RequestError(f"datatype {datatype!r} does not fit this model; expected {wanted}")
    expected = [-1, *schema.input_shape]
    if list(shape[1:]) != list(schema.input_shape):
        raise RequestError(f"shape {shape} does not fit this model's input shape {expected}")
    if raw is not None:
        decoded = decode_binary_tensor(tensor["name"], shape, datatype, raw)
        return _rows(decoded, shape) if schema.is_table else decoded
    count = int(np.prod(shape))
    if numeric_arrays and count and not schema.string_input:
        fast = _numeric_array(tensor["data"], count)
        if fast is not None:  # to_batch checks its values (finite) like any binary tensor's
            return fast.reshape(shape)
    flat = _flatten(tensor["data"])
    if len(flat) != count:
        raise RequestError(f"data holds {len(flat)} values but shape {shape} needs {count}")
    if schema.is_text:
        return flat
    return _rows(flat, shape)


def _rows(flat: list[Any], shape: list[int]) -> list[Any]:
    return np.asarray(flat, dtype=object).reshape(shape).tolist() if flat else []


def _numeric_array(data: Any, count: int) -> np.ndarray | None:
    """``data`` (flat or nested, as the protocol allows) straight into one numeric array when it
    is one: ~10x cheaper than flattening it value by value. None for anything else (strings,
    booleans, ragged or miscounted data), which takes the checked path for its message."""
    if isinstance(data, np.ndarray):  # already parsed into numbers (``maas.serving.json_arrays``)
        return data if data.size == count else None
    if not isinstance(data, list):
        return None
    try:
        array = np.asarray(data)
    except (ValueError, TypeError):
        return None
    return array if array.dtype.kind in "iuf" and array.size == count else None


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, np.ndarray):
        return data.ravel().tolist()
    if not isinstance(data, list):
        return [data]
    if all(not isinstance(item, list) for item in data):
        return data
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item))
    return flat


def v2_response(name: str, version: int, outputs: np.ndarray, request_id: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model_name": name,
        "model_version": str(version),
        "outputs": [{"name": OUTPUT, "shape": list(outputs.shape), "datatype": "FP32",
                     "data": outputs.reshape(-1)}],
    }
    if request_id is not None:
        body["id"] = request_id
    return body


def v2_model_metadata(status: dict[str, Any]) -> dict[str, Any]:
    schema = DataSchema.from_dict(status["schema"])
    return {
        "name": status["name"],
        "versions": [str(v) for v in status["served_versions"]],
        "platform": "tensorflow_keras",
        "inputs": [{"name": "inputs", "datatype": "BYTES" if schema.string_input else "FP32",
                    "shape": [-1, *schema.input_shape]}],
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, schema.num_classes]}],
    }


@dataclass(frozen=True)
class V2Reply:
    """How a v2 infer request wants its answer: its id back, and which outputs as binary data."""

    request_id: Any = None
    binary: frozenset[str] = frozenset()


def v2_reply_options(body: Any) -> V2Reply:
    """Read from the request's JSON: ``outputs: [{"name", "parameters": {"binary_data": bool}}]``
    and ``parameters: {"binary_data_output": bool}`` (every output binary unless it says otherwise),
    as Triton's binary tensor data extension defines them."""
    if isinstance(body, BinaryV2Request):
        body = body.header
    if not isinstance(body, dict):
        return V2Reply()  # parse_v2_inputs says what is wrong with it
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise RequestError(f"request parameters must be an object, got {parameters!r}")
    every = _flag(parameters, "binary_data_output", False, "request parameters")
    requested = body.get("outputs")
    if requested is None:
        return V2Reply(body.get("id"), frozenset({OUTPUT}) if every else frozenset())
    if not isinstance(requested, list):
        raise RequestError(f"outputs must be a list of {{name, parameters}} objects, got {requested!r}")
    binary = set()
    for output in requested:
        name = output.get("name") if isinstance(output, dict) else None
        if name != OUTPUT:
            raise RequestError(f"unknown output {name!r} requested; this model has one output, {OUTPUT!r}")
        output_parameters = output.get("parameters") or {}
        if not isinstance(output_parameters, dict):
            raise RequestError(f"parameters of output {name!r} must be an object, got {output_parameters!r}")
        if _flag(output_parameters, "binary_data", every, f"output {name!r}"):
            binary.add(name)
    return V2Reply(body.get("id"), frozenset(binary))


def _flag(parameters: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise RequestError(f"{key} of {where} must be true or false, got {value!r}")
    return value
