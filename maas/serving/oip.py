"""Open Inference Protocol (v2): JSON tensors ``{name, shape, datatype, data}`` in and out, and
model metadata, as KServe and Triton clients expect them."""

from __future__ import annotations

from typing import Any

import numpy as np

from maas.data import DataSchema
from maas.errors import RequestError

V2_NUMERIC = {"FP32", "FP64", "FP16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
              "UINT64"}


def parse_v2_inputs(body: Any, schema: DataSchema) -> list[Any]:
    """The rows of a V2 infer request, as nested lists for ``to_batch`` to validate."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise RequestError("request body must be a JSON object with a non-empty 'inputs' list of tensors")
    if len(body["inputs"]) != 1:
        raise RequestError(f"this model has one input, 'inputs'; got {len(body['inputs'])} tensors")
    tensor = body["inputs"][0]
    if not isinstance(tensor, dict):
        raise RequestError("each input tensor must be an object with name, shape, datatype and data")
    missing = [key for key in ("name", "shape", "datatype", "data") if key not in tensor]
    if missing:
        raise RequestError(f"input tensor lacks {missing}; expected name, shape, datatype, data")
    shape, datatype = tensor["shape"], tensor["datatype"]
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise RequestError(f"shape must be a list of non-negative integers, got {shape!r}")
    wanted = "BYTES" if schema.is_text else "FP32 (or another numeric type)"
    if (datatype == "BYTES") != schema.is_text or (datatype != "BYTES" and datatype not in V2_NUMERIC):
        raise RequestError(f"datatype {datatype!r} does not fit this model; expected {wanted}")
    expected = [-1, *schema.input_shape]
    if list(shape[1:]) != list(schema.input_shape):
        raise RequestError(f"shape {shape} does not fit this model's input shape {expected}")
    flat = _flatten(tensor["data"])
    count = int(np.prod(shape))
    if len(flat) != count:
        raise RequestError(f"data holds {len(flat)} values but shape {shape} needs {count}")
    if schema.is_text:
        return flat
    return np.asarray(flat, dtype=object).reshape(shape).tolist() if count else []


def _flatten(data: Any) -> list[Any]:
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
        "outputs": [{"name": "probabilities", "shape": list(outputs.shape), "datatype": "FP32",
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
        "inputs": [{"name": "inputs", "datatype": "BYTES" if schema.is_text else "FP32",
                    "shape": [-1, *schema.input_shape]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, schema.num_classes]}],
    }
