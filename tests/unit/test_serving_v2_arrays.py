"""V2 JSON tensors parsed straight into arrays (``parse_v2_tensor``, the serving path) give the
same batch and the same refusals as the value-by-value path (``parse_v2_inputs``)."""

from typing import Any

import numpy as np
import pytest

from maas.data import DataSchema
from maas.errors import RequestError
from maas.serving.inputs import to_batch
from maas.serving.oip import parse_v2_inputs, parse_v2_tensor

SCHEMA = DataSchema(input_shape=(3,), classes=["a", "b"])


def body(data: Any, shape: list[int]) -> dict[str, Any]:
    return {"inputs": [{"name": "inputs", "shape": shape, "datatype": "FP32", "data": data}]}


@pytest.mark.parametrize("data", [[1, 2, 3, 4.5, 5, 6], [[1, 2, 3], [4.5, 5, 6]], [[1, 2, 3], [4, 5, 6]]])
def test_numbers_become_the_same_batch(data: Any) -> None:
    fast = parse_v2_tensor(body(data, [2, 3]), SCHEMA)
    assert isinstance(fast, np.ndarray)
    np.testing.assert_array_equal(to_batch(fast, SCHEMA, 8),
                                  to_batch(parse_v2_inputs(body(data, [2, 3]), SCHEMA), SCHEMA, 8))


def _refusal(parse: Any, data: Any, shape: list[int]) -> str:
    with pytest.raises(RequestError) as caught:
        to_batch(parse(body(data, shape), SCHEMA), SCHEMA, 8)
    return str(caught.value)


@pytest.mark.parametrize("data, shape", [
    ([1, 2, "x", 4, 5, 6], [2, 3]), ([[1, 2, 3], [4, 5]], [2, 3]), ([1, 2, 3, 4, 5], [2, 3]),
    ([True, False, True], [1, 3]), ([1, 2, float("nan")], [1, 3]),
])
def test_bad_data_gets_the_same_message(data: Any, shape: list[int]) -> None:
    assert _refusal(parse_v2_tensor, data, shape) == _refusal(parse_v2_inputs, data, shape)
