"""A request's rows checked against the schema of the version that answers it, turned into one
batch: float32 ``[n, *input_shape]``, or one string per row for text models. Both protocols end
here, so a bad value gets the same message over v1 and v2."""

from __future__ import annotations

from typing import Any

import numpy as np

from maas.data import DataSchema
from maas.errors import RequestError


def to_batch(rows: Any, schema: DataSchema, max_rows: int) -> np.ndarray:
    """Validate a request's rows against the schema; return float32 [n, *input_shape]. ``rows``:
    a list of rows, or an array of them (a v2 tensor sent as binary data, already typed)."""
    if not isinstance(rows, (list, np.ndarray)):
        raise RequestError(f"instances must be a list of rows, got {type(rows).__name__}")
    if not len(rows):
        raise RequestError("instances is empty: send at least one row")
    if len(rows) > max_rows:
        raise RequestError(f"{len(rows)} rows in one request; at most {max_rows} are accepted", status=413)
    expected = list(schema.input_shape)
    if isinstance(rows, np.ndarray):
        parsed = rows
        if schema.is_text or parsed.dtype.kind not in "iuf":
            raise RequestError(f"rows of {parsed.dtype} do not fit this model's input")
    else:
        rows = [_unwrap_named(row) for row in rows]
        if schema.is_text:
            return _text_batch(rows)
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
