"""A request's rows checked against the schema of the version that answers it, turned into one
batch: float32 ``[n, *input_shape]``, one string per row for text models, or a string matrix
``[n, columns]`` for a table with categorical columns (``maas/preprocessing.py``). Both protocols
end here, so a bad value gets the same message over v1 and v2.

Missing values (JSON ``null``, a NaN in binary data, ``""`` in a table) are accepted only by a
model whose schema says it fills them itself (``schema.accepts_missing``: trained with
``data.missing: impute_mean | impute_median``); every other model refuses them, as before."""

from __future__ import annotations

from typing import Any

import numpy as np

from maas.data import DataSchema, category_text
from maas.errors import RequestError

NO_MISSING = ("this model takes no missing values (it was not trained with data.missing: "
              "impute_mean or impute_median)")


def to_batch(rows: Any, schema: DataSchema, max_rows: int) -> np.ndarray:
    """Validate a request's rows against the schema; return float32 [n, *input_shape]. ``rows``:
    a list of rows, or an array of them (a v2 tensor sent as binary data, already typed)."""
    if not isinstance(rows, (list, np.ndarray)):
        raise RequestError(f"instances must be a list of rows, got {type(rows).__name__}")
    if not len(rows):
        raise RequestError("instances is empty: send at least one row")
    if len(rows) > max_rows:
        raise RequestError(f"{len(rows)} rows in one request; at most {max_rows} are accepted", status=413)
    if schema.is_table:
        return _table_batch(rows, schema)
    expected = list(schema.input_shape)
    if isinstance(rows, np.ndarray):
        parsed = rows
        if schema.is_text:
            raise RequestError("rows are numbers; this model takes one string per row")
        if parsed.dtype.kind not in "iuf":
            raise RequestError(f"rows of {parsed.dtype} do not fit this model's input")
    else:
        rows = [_unwrap_named(row) for row in rows]
        if schema.is_text:
            return _text_batch(rows)
        if schema.accepts_missing:
            rows = [_null_to_nan(row) for row in rows]
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
    if schema.accepts_missing:  # NaN is a missing value the model fills; infinity is not
        if np.isinf(batch).any():
            bad = int(np.isinf(batch.reshape(len(batch), -1)).any(axis=1).argmax())
            raise RequestError(f"row {bad} holds infinity; every value must be a finite number "
                               "or null (missing)")
        return batch
    if not np.isfinite(batch).all():
        bad = int((~np.isfinite(batch.reshape(len(batch), -1))).any(axis=1).argmax())
        raise RequestError(f"row {bad} holds NaN or infinity; every value must be a finite number")
    return batch


def _null_to_nan(value: Any) -> Any:
    if isinstance(value, list):
        return [_null_to_nan(item) for item in value]
    return float("nan") if value is None else value


def _table_batch(rows: Any, schema: DataSchema) -> np.ndarray:
    """Rows of a table model: each a list of the feature values in column order, or an object
    ``{column: value}`` (a column left out is missing). Numbers (or their text) for numeric
    columns, text (or integer codes) for categorical ones; returned as the model's string matrix."""
    names = list(schema.feature_names or [])
    if isinstance(rows, np.ndarray):  # binary v2 BYTES data
        rows = rows.tolist()
    categorical = schema.categorical
    batch = np.empty((len(rows), len(names)), dtype=object)
    for i, row in enumerate(rows):
        if isinstance(row, dict):
            unknown = sorted(str(key) for key in row if key not in names)
            if unknown:
                raise RequestError(f"row {i} names columns this model does not have: {unknown[:5]}; "
                                   f"its columns are {names}")
            row = [row.get(name) for name in names]
        if not isinstance(row, (list, tuple)) or len(row) != len(names):
            got = f"{len(row)} values" if isinstance(row, (list, tuple)) else type(row).__name__
            raise RequestError(f"row {i} must hold {len(names)} values (columns {names}), got {got}")
        for j, (name, value) in enumerate(zip(names, row, strict=True)):
            batch[i, j] = (_category_cell if name in categorical else _number_cell)(
                value, i, name, schema.accepts_missing)
    return batch


def _number_cell(value: Any, row: int, column: str, accepts_missing: bool) -> str:
    number, wrong = value, f"row {row}, column '{column}' holds {value!r}; a number is expected"
    if isinstance(value, str):
        try:
            number = float(value) if value.strip() else None
        except ValueError:
            raise RequestError(wrong) from None
    elif isinstance(value, bool) or value is not None and not isinstance(value, (int, float)):
        raise RequestError(wrong)
    if number is None or number != number:  # null, "", NaN
        if not accepts_missing:
            raise RequestError(f"row {row}, column '{column}' is missing; {NO_MISSING}")
        return "nan"
    if number in (float("inf"), float("-inf")):
        raise RequestError(f"row {row}, column '{column}' holds infinity; a finite number is expected")
    return repr(float(number))


def _category_cell(value: Any, row: int, column: str, accepts_missing: bool) -> str:
    if value is not None and not isinstance(value, (str, int, float)):
        raise RequestError(f"row {row}, column '{column}' holds {value!r}; a category (text) is expected")
    text = category_text(value)
    if text == "" and not accepts_missing:
        raise RequestError(f"row {row}, column '{column}' is missing; {NO_MISSING}")
    return text


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
        if bad is None and _holds_null(row):
            return f"row {i} holds null; {NO_MISSING}"
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
    if isinstance(value, bool) or value is not None and not isinstance(value, (int, float)):
        return value
    return None


def _holds_null(value: Any) -> bool:
    return any(_holds_null(item) for item in value) if isinstance(value, list) else value is None
