"""Numbers in a JSON request body straight into an array.

``orjson.loads`` makes a Python float per number and ``np.asarray`` then walks those lists again:
~155 us for a 64-row digits request (64 x 8 x 8 numbers), the largest single cost of such a
request in the replica (``bench/profile_replica.py --rows 64``). simdjson parses the body into its
own document, and ``as_buffer`` copies a nested array of numbers out as doubles in C: ~50 us,
plus ~30 us to check that the rows are rectangular.

Only the common case takes this path: a TF Serving body ``{"instances": [...]}`` or
``{"inputs": [...]}``, or an Open Inference Protocol body with one input tensor, whose array is
rectangular and holds only numbers. Anything else (strings,
null, booleans, named inputs, ragged or empty rows, invalid JSON, a number out of range) answers
None, and the caller parses the body the general way, which gives the messages a client sees for
such bodies. So the fast path never accepts a body the general path refuses, and never refuses
one: it returns the same values (as float64, which ``to_batch`` checks and casts as it does any
array), and an integral float is the same category code as the integer (``category_text``).

A parser is reused by one replica's event loop, never shared between threads: a document's
values are only valid until the parser's next ``parse``, so the array is copied out before then."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from maas.serving.tfserving import Format

_KEYS: dict[str, Format] = {"instances": "row", "inputs": "columnar"}
# Below this, orjson + numpy is faster (one digits row, ~400 bytes: 4 us against 11 us); the two
# cross at ~2.5 KiB (8 rows: 28 us against 22 us).
MIN_BODY_BYTES = 2048


class JsonArrays:
    """``v1_rows(body)``: a TF Serving body's rows as one float64 array; ``v2_body(body)``: an
    Open Inference Protocol body with its tensor's data as one. Either answers None to say: parse
    it the general way (also for bodies under ``MIN_BODY_BYTES``)."""

    def __init__(self) -> None:
        self._parser: Any = None

    def v1_rows(self, body: bytes) -> tuple[np.ndarray, Format] | None:
        return self._fast(body, _v1_rows)

    def v2_body(self, body: bytes) -> dict[str, Any] | None:
        """The body with its one input tensor's ``data`` as a float64 array of the data's own
        nesting (``parse_v2_tensor`` checks its count against the shape), the rest as plain
        values."""
        return self._fast(body, _v2_body)

    def _fast(self, body: bytes, read: Callable[[Any, Any], Any]) -> Any:
        if len(body) < MIN_BODY_BYTES:
            return None
        import simdjson

        if self._parser is None:
            self._parser = simdjson.Parser()
        try:
            return read(self._parser.parse(body), simdjson)
        except Exception:  # noqa: BLE001 - whatever simdjson refuses (not JSON, too deep, not
            # numbers, a number out of range): the general path parses it and says what is wrong
            return None


def _v1_rows(document: Any, simdjson: Any) -> tuple[np.ndarray, Format] | None:
    if not isinstance(document, simdjson.Object):
        return None
    present = [key for key in _KEYS if key in document]
    if len(present) != 1 or not isinstance(document[present[0]], simdjson.Array):
        return None
    array = _numbers(document[present[0]], simdjson.Array)
    return None if array is None else (array, _KEYS[present[0]])


def _v2_body(document: Any, simdjson: Any) -> dict[str, Any] | None:
    if not isinstance(document, simdjson.Object) or not isinstance(
            document.get("inputs"), simdjson.Array) or len(document["inputs"]) != 1:
        return None
    tensor = document["inputs"][0]
    if not isinstance(tensor, simdjson.Object) or not isinstance(tensor.get("data"), simdjson.Array):
        return None
    data = _numbers(tensor["data"], simdjson.Array)
    if data is None:
        return None
    plain_tensor = {key: _plain(tensor[key]) for key in tensor.keys() if key != "data"}
    request = {key: _plain(document[key]) for key in document.keys() if key != "inputs"}
    return {**request, "inputs": [{**plain_tensor, "data": data}]}


def _plain(value: Any) -> Any:
    """A simdjson value as the dicts, lists and scalars ``orjson.loads`` gives."""
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if hasattr(value, "as_list"):
        return value.as_list()
    return value


def _numbers(values: Any, array_type: type) -> np.ndarray | None:
    """A rectangular nested array of numbers as float64 of its shape; None for anything else."""
    shape = _first_shape(values, array_type)
    if not shape:
        return None
    level = [values]
    for depth, size in enumerate(shape):  # every array at a depth has the first one's length
        if any(not isinstance(node, array_type) or len(node) != size for node in level):
            return None
        if depth < len(shape) - 1:
            level = [child for node in level for child in node]
    flat = np.frombuffer(values.as_buffer(of_type="d"), dtype=np.float64)
    if flat.size != int(np.prod(shape)):  # a leaf that is an array itself, or an empty one
        return None
    return flat.reshape(shape)


def _first_shape(values: Any, array_type: type) -> list[int]:
    """Lengths down the first element of each level: the shape the whole array must have."""
    shape, node = [], values
    while isinstance(node, array_type):
        if not len(node):
            return []
        shape.append(len(node))
        node = node[0]
    return shape
