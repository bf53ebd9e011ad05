"""TensorFlow Serving REST (v1): the request envelope (``instances`` rows or ``inputs``
columns), the response, and the status and metadata bodies, as TF Serving writes them, so its
clients work unchanged."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from maas.data import DataSchema
from maas.errors import RequestError

Format = Literal["row", "columnar"]


def extract_rows(body: Any) -> tuple[Any, Format]:
    """TF Serving accepts ``{"instances": [...]}`` (row) or ``{"inputs": ...}`` (columnar)."""
    if not isinstance(body, dict):
        raise RequestError(
            f"request body must be a JSON object with 'instances' or 'inputs', got {type(body).__name__}"
        )
    has_rows, has_columns = "instances" in body, "inputs" in body
    if has_rows == has_columns:
        raise RequestError("request body must have exactly one of 'instances' (rows) or 'inputs' (columnar)")
    if has_rows:
        return body["instances"], "row"
    inputs = body["inputs"]
    if isinstance(inputs, dict):  # named inputs; our models have one input
        if len(inputs) != 1:
            raise RequestError(f"'inputs' names {sorted(inputs)}; this model has one input, 'inputs'")
        inputs = next(iter(inputs.values()))
    return inputs, "columnar"


def format_response(outputs: np.ndarray, fmt: Format) -> dict[str, Any]:
    return {"predictions": outputs} if fmt == "row" else {"outputs": outputs}


def tf_serving_metadata(status: dict[str, Any]) -> dict[str, Any]:
    """``GET /v1/models/{name}/metadata``: the serving_default signature, as TF Serving writes it."""
    schema = DataSchema.from_dict(status["schema"])

    def tensor(name: str, dtype: str, dims: list[int]) -> dict[str, Any]:
        return {"dtype": dtype, "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in dims],
                                                 "unknown_rank": False}, "name": name}

    signature = {
        "inputs": {"inputs": tensor("serving_default_inputs:0",
                                    "DT_STRING" if schema.string_input else "DT_FLOAT",
                                    [-1, *schema.input_shape])},
        "outputs": {"probabilities": tensor("StatefulPartitionedCall:0", "DT_FLOAT",
                                            [-1, schema.num_classes])},
        "method_name": "tensorflow/serving/predict",
    }
    return {
        "model_spec": {"name": status["name"], "signature_name": "", "version": str(status["version"])},
        "metadata": {"signature_def": {"signature_def": {"serving_default": signature}}},
        "classes": schema.classes,
    }


def tf_serving_status(versions: list[tuple[int | None, str, str]]) -> dict[str, Any]:
    """``GET /v1/models/{name}`` body, as TensorFlow Serving writes it: one entry per served
    version, newest first; each entry is ``(version, state, error message)``."""
    return {
        "model_version_status": [{
            "version": str(version) if version is not None else "",
            "state": state,
            "status": {"error_code": "OK" if not error else "UNKNOWN", "error_message": error},
        } for version, state, error in sorted(versions, key=lambda v: -(v[0] or 0))]
    }
