"""Serving logic kept out of Ray actors so it is unit-testable: settings, request parsing and
validation, and a loaded model that answers stacked numpy batches.
"""

from __future__ import annotations

import hmac
import os
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from maas.config import default_registry_root
from maas.data import DataSchema
from maas.schema import format_validation_error

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _Schema(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def check_api_key(headers: dict[str, str], keys: list[str]) -> None:
    """``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; 401 if absent, 403 if wrong."""
    if not keys:
        return
    given = headers.get("x-api-key") or ""
    authorization = headers.get("authorization") or ""
    if not given and authorization.lower().startswith("bearer "):
        given = authorization[7:].strip()
    if not given:
        raise RequestError("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'", 401)
    if not any(hmac.compare_digest(given.encode(), key.encode()) for key in keys):
        raise RequestError("API key not accepted", 403)


LABEL_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,31}$"  # never all digits: a label is not a version


class VersionPolicy(_Schema):
    """Which registered versions a model serves, as TensorFlow Serving's model_version_policy:
    ``{latest: 2}`` (the two newest) or ``{specific: [3, 4]}``."""

    latest: int | None = Field(None, ge=1, le=16)
    specific: list[int] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> VersionPolicy:
        if (self.latest is None) == (self.specific is None):
            raise ValueError("set exactly one of 'latest: N' or 'specific: [version, ...]'")
        return self


class ModelSettings(_Schema):
    """One model's settings: its deployment's ``user_config``, or its entry in the Ingress's for a
    model hosted there. Changes apply live through ``reconfigure``, on every replica, without a
    restart."""

    versions: VersionPolicy = Field(default_factory=lambda: VersionPolicy(latest=1))
    # label -> version number or "latest". A labelled version is served even outside the policy.
    labels: dict[Annotated[str, StringConstraints(pattern=LABEL_PATTERN)], int | Literal["latest"]] = (
        Field(default_factory=dict))
    # The label that answers requests naming no version; none: the newest version the policy picks.
    default: str | None = Field(None, pattern=LABEL_PATTERN)
    # Re-read the registry every this many seconds and swap to what the policy now picks; 0: only
    # when user_config changes (`python -m maas serve refresh` bumps `refresh` for that).
    poll_registry_s: float = Field(0, ge=0, le=86400)
    refresh: int = 0
    max_batch_size: int = Field(32, ge=1, le=4096)
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=10)
    # Requests waiting for this model in one replica; past it: 503 + Retry-After at once instead
    # of unbounded latency (on top of Serve's max_queued_requests for the deployment).
    max_pending_requests: int = Field(1024, ge=1, le=1_000_000)


class ModelEndpoint(_Schema):
    name: str = Field(pattern=MODEL_NAME_PATTERN)
    # "deployment": a Serve deployment of its own, named after the model, scaled on its own.
    # "ingress": inside the HTTP ingress's replicas, scaled with them: one Serve hop fewer per
    # request, the fastest mode for a small model (bench/serve_load.py).
    hosting: Literal["deployment", "ingress"] = "deployment"
    # The deployment's starting user_config (see ModelSettings). In a Serve config file, the
    # deployment's own `user_config` replaces it, and changes there apply live.
    user_config: ModelSettings | None = None


class ServeAppConfig(_Schema):
    """The ``args`` of our application in a Serve config file."""

    registry_root: str | None = Field(None, description="Default: $MAAS_REGISTRY or ~/.maas/registry")
    models: list[ModelEndpoint] = Field(min_length=1)
    max_rows_per_request: int = Field(1024, ge=1)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    # API keys: listed here and/or in the environment variable named below (comma-separated).
    # With none configured, predict is open; health and metadata stay open either way.
    api_keys: list[str] = Field(default_factory=list)
    api_keys_env: str = "MAAS_API_KEYS"
    # Seconds a client is told to wait (Retry-After) when a model's queue is full (503).
    retry_after_s: float = Field(1.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _unique_names(self) -> ServeAppConfig:
        names = [m.name for m in self.models]
        if len(names) != len(set(names)):
            raise ValueError(f"model names must be unique, got {names}")
        return self

    def resolved_root(self) -> str:
        return self.registry_root or default_registry_root()

    def resolved_api_keys(self) -> list[str]:
        from_env = [k.strip() for k in os.environ.get(self.api_keys_env, "").split(",") if k.strip()]
        return [*self.api_keys, *from_env]


class IngressSettings(_Schema):
    """The ``Ingress`` deployment's ``user_config``: the settings of the models it hosts itself
    (``hosting: ingress``), by name; applied live like a model deployment's."""

    models: dict[str, ModelSettings] = Field(default_factory=dict)


def ingress_model_settings(user_config: dict[str, Any] | None,
                           config: ServeAppConfig) -> dict[str, ModelSettings]:
    """Settings for each model the ingress hosts: its entry in the Ingress's ``user_config``, else
    its ``user_config`` in the app's args, else the defaults. Entries for models the ingress does
    not host are refused, so a typo cannot silently leave a model on its old settings."""
    from pydantic import ValidationError

    try:
        given = IngressSettings.model_validate(user_config or {}).models
    except ValidationError as exc:
        raise ValueError(format_validation_error(exc, "user_config of Ingress")) from None
    hosted = {m.name: m for m in config.models if m.hosting == "ingress"}
    unknown = sorted(set(given) - set(hosted))
    if unknown:
        raise ValueError(f"user_config of Ingress has settings for {', '.join(unknown)}, which the "
                         f"ingress does not host; models with hosting: ingress: "
                         f"{', '.join(hosted) or 'none'}")
    return {name: given.get(name) or endpoint.user_config or ModelSettings()
            for name, endpoint in hosted.items()}


@dataclass(frozen=True)
class ServingPlan:
    """What a model deployment serves: versions (ascending), label map, the default version."""

    versions: tuple[int, ...]
    labels: dict[str, int]
    default: int


def plan_versions(name: str, settings: ModelSettings, registered: list[int],
                  registry_labels: dict[int, list[str]] | None = None) -> ServingPlan:
    """Resolve the policy and labels against the registry's versions. ``registry_labels`` are the
    labels stored in the registry for the picked versions; labels in the config override them."""
    if not registered:
        raise LookupError(f"model '{name}' has no registered version")
    registered = sorted(registered)
    policy = settings.versions
    if policy.latest is not None:
        picked = registered[-policy.latest:]
    else:
        missing = sorted(set(policy.specific or []) - set(registered))
        if missing:
            raise LookupError(f"model '{name}' has no version {', '.join(map(str, missing))} "
                              f"(registered: {registered})")
        picked = sorted(set(policy.specific or []))
    labels: dict[str, int] = {}
    for version in picked:  # ascending: the newest version carrying a registry label keeps it
        for label in (registry_labels or {}).get(version, []):
            labels[label] = version
    for label, target in settings.labels.items():
        number = registered[-1] if target == "latest" else target
        if number not in registered:
            raise LookupError(f"label '{label}' of model '{name}' names version {number}, which is "
                              f"not registered (registered: {registered})")
        labels[label] = number
    if settings.default is not None and settings.default not in labels:
        raise LookupError(f"default label '{settings.default}' of model '{name}' names no version "
                          f"(labels: {sorted(labels) or 'none'})")
    default = labels[settings.default] if settings.default else picked[-1]
    return ServingPlan(tuple(sorted({*picked, *labels.values()})), labels, default)


def choose_version(name: str, plan: ServingPlan, version: str | None = None,
                   label: str | None = None) -> int:
    """The served version a request asks for: by number, by label, or the default."""
    if version is not None:
        if not version.isdigit() or int(version) not in plan.versions:
            raise RequestError(f"model '{name}' version {version} is not served "
                               f"(served versions: {', '.join(map(str, plan.versions))})", 404)
        return int(version)
    if label is not None:
        if label not in plan.labels:
            known = ", ".join(f"{k}={v}" for k, v in sorted(plan.labels.items())) or "none"
            raise RequestError(f"model '{name}' has no served version labelled '{label}' "
                               f"(labels: {known})", 404)
        return plan.labels[label]
    return plan.default


# ---------------------------------------------------------------------------------------------
# Requests


class RequestError(ValueError):
    """A client error: becomes a 4xx with ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


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


def to_batch(rows: Any, schema: DataSchema, max_rows: int) -> np.ndarray:
    """Validate a request's rows against the schema; return float32 [n, *input_shape]."""
    if not isinstance(rows, list):
        raise RequestError(f"instances must be a list of rows, got {type(rows).__name__}")
    if not rows:
        raise RequestError("instances is empty: send at least one row")
    if len(rows) > max_rows:
        raise RequestError(f"{len(rows)} rows in one request; at most {max_rows} are accepted", 413)
    rows = [_unwrap_named(row) for row in rows]
    if schema.is_text:
        return _text_batch(rows)
    expected = list(schema.input_shape)
    try:
        parsed = np.asarray(rows)  # dtype inferred: strings, booleans and ragged rows show up in it
    except (ValueError, TypeError):
        raise RequestError(_shape_message(rows, expected)) from None
    if parsed.dtype.kind not in "iuf":
        raise RequestError(_shape_message(rows, expected))
    batch = parsed.astype(np.float32, copy=False)
    if list(batch.shape[1:]) != expected:
        if batch.ndim == 2 and [batch.shape[1]] != expected and len(expected) == 1:
            raise RequestError(f"each row must have {expected[0]} features, got {batch.shape[1]}")
        raise RequestError(f"each row must have shape {expected}, got {list(batch.shape[1:])}")
    if not np.isfinite(batch).all():
        bad = int((~np.isfinite(batch.reshape(len(batch), -1))).any(axis=1).argmax())
        raise RequestError(f"row {bad} holds NaN or infinity; every value must be a finite number")
    return batch


def _text_batch(rows: list[Any]) -> np.ndarray:
    for i, row in enumerate(rows):
        if not isinstance(row, str):
            raise RequestError(f"row {i} is {type(row).__name__}; this model takes one string per row")
    return np.array(rows, dtype=str)


def _unwrap_named(row: Any) -> Any:
    # TF Serving row format also allows {"inputs": value} per instance for single-input models.
    if isinstance(row, dict):
        if len(row) != 1:
            raise RequestError(
                f"a named instance must have one key (this model has one input), got {sorted(row)}")
        return next(iter(row.values()))
    return row


def _shape_message(rows: list[Any], expected: list[int]) -> str:
    for i, row in enumerate(rows):
        bad = _first_non_number(row)
        if bad is not None:
            return f"row {i} holds {bad!r}; every value must be a number"
    return f"rows are ragged or mis-shaped; each row must have shape {expected}"


def _first_non_number(value: Any) -> Any:
    if isinstance(value, list):
        for item in value:
            found = _first_non_number(item)
            if found is not None:
                return found
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return None


# ---------------------------------------------------------------------------------------------
# Open Inference Protocol (V2): JSON tensors {name, shape, datatype, data}

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


def tf_serving_metadata(status: dict[str, Any]) -> dict[str, Any]:
    """``GET /v1/models/{name}/metadata``: the serving_default signature, as TF Serving writes it."""
    schema = DataSchema.from_dict(status["schema"])

    def tensor(name: str, dtype: str, dims: list[int]) -> dict[str, Any]:
        return {"dtype": dtype, "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in dims],
                                                 "unknown_rank": False}, "name": name}

    signature = {
        "inputs": {"inputs": tensor("serving_default_inputs:0",
                                    "DT_STRING" if schema.is_text else "DT_FLOAT",
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


class CountBuffer:
    """Counts by tag set, drained into a metrics Counter once a second instead of once per
    request: a ``Counter.inc`` with tags took ~8% of the ingress's CPU under load."""

    def __init__(self) -> None:
        self._counts: dict[tuple[tuple[str, str], ...], int] = {}

    def add(self, tags: dict[str, str], count: int = 1) -> None:
        key = tuple(sorted(tags.items()))
        self._counts[key] = self._counts.get(key, 0) + count

    def drain(self) -> list[tuple[dict[str, str], int]]:
        counts, self._counts = self._counts, {}
        return [(dict(key), count) for key, count in counts.items()]


def split_batch(outputs: np.ndarray, lengths: list[int]) -> list[np.ndarray]:
    """Undo the stacking of several requests' rows into one model call."""
    return np.split(outputs, np.cumsum(lengths)[:-1])


def predict_grouped(items: list[tuple[Any, np.ndarray]],
                    observe: Any = None) -> list[np.ndarray]:
    """One model call per distinct model in a batch of ``(model, rows)`` requests; outputs come
    back in request order. A batch can mix versions (a request pinned to version 3 beside one for
    the default), and a request keeps the model it was validated against even if a swap happens
    while it waits. ``observe(model, rows_in_call)`` is told about each call (metrics)."""
    groups: dict[int, list[int]] = {}
    for index, (model, _) in enumerate(items):
        groups.setdefault(id(model), []).append(index)
    results: list[Any] = [None] * len(items)
    for indices in groups.values():
        model = items[indices[0]][0]
        arrays = [items[i][1] for i in indices]
        stacked = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
        if observe is not None:
            observe(model, len(stacked))
        outputs = split_batch(model.predict(stacked), [len(a) for a in arrays])
        for i, output in zip(indices, outputs, strict=True):
            results[i] = output
    return results


def format_response(outputs: np.ndarray, fmt: Format) -> dict[str, Any]:
    return {"predictions": outputs} if fmt == "row" else {"outputs": outputs}


# ---------------------------------------------------------------------------------------------
# Models


@dataclass
class LoadedModel:
    name: str
    version: int
    schema: DataSchema
    model: Any
    metadata: dict[str, Any]
    loaded_at: float = field(default_factory=time.time)

    @classmethod
    def from_registry(cls, root: str, name: str, version: int | str = "latest") -> LoadedModel:
        """Resolve, fetch, verify the content hash, load in safe mode and warm up."""
        from maas.registry import Registry
        from maas.tfkeras import load_model

        registry = Registry(root)
        entry = registry.get(name, version)
        directory = registry.fetch(entry)
        model = load_model(str(directory / entry.metadata.get("format", "model.keras")), compile=False)
        loaded = cls(name, entry.version, DataSchema.from_dict(entry.metadata["schema"]), model,
                     entry.metadata)
        loaded.predict(loaded.example_batch())  # warm-up: first call traces the graph
        return loaded

    @cached_property
    def _graph_call(self) -> Any:
        """The model as one traced graph for any batch size: a call costs ~0.4 ms instead of
        ~1.5 ms for the eager layer-by-layer call (measured on this project's MLP, 1-32 rows)."""
        from maas.tfkeras import tensorflow

        tf = tensorflow()
        spec = tf.TensorSpec([None, *self.schema.input_shape],
                             tf.string if self.schema.is_text else tf.float32)
        model = self.model

        def call(batch: Any) -> Any:
            return model(batch, training=False)

        return tf.function(call, input_signature=[spec], autograph=False)

    def example_batch(self) -> np.ndarray:
        if self.schema.is_text:
            return np.array([""])
        return np.zeros((1, *self.schema.input_shape), dtype=np.float32)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        # Never model.predict(): it costs ~60 ms per call whatever the size.
        return self._graph_call(batch).numpy()

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "state": "AVAILABLE",
            "schema": self.schema.to_dict(),
            "metrics": self.metadata.get("metrics", {}),
            "content_hash": self.metadata.get("content_hash"),
            "labels": self.metadata.get("labels", []),
            "loaded_at": self.loaded_at,
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
