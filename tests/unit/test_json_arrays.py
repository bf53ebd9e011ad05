import json

import numpy as np
import orjson
import pytest

from maas.data import DataSchema
from maas.errors import RequestError
from maas.serving.inputs import to_batch
from maas.serving.json_arrays import MIN_BODY_BYTES, JsonArrays
from maas.serving.tfserving import extract_rows

IMAGE = DataSchema(input_shape=(8, 8), classes=list(range(10)), source="test-images")
TABLE = DataSchema(input_shape=(3,), classes=["a", "b"], source="test-table", dtype="table",
                   feature_names=["age", "city", "n"],
                   preprocessing={"categorical": {"city": ["1", "2", "3"]}})


def _general(body: bytes) -> tuple[object, str]:
    return extract_rows(orjson.loads(body))


def _padded(envelope: dict) -> bytes:
    """The body, made long enough for the fast path (extra keys are allowed by TF Serving)."""
    body = orjson.dumps(envelope)
    if len(body) < MIN_BODY_BYTES:
        body = orjson.dumps({**envelope, "signature_name": " " * (MIN_BODY_BYTES - len(body))})
    return body


@pytest.mark.parametrize("seed", range(20))
def test_plain_numbers_come_out_as_the_general_path_reads_them(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = [int(rng.integers(1, 70)), *[int(n) for n in rng.integers(1, 9, size=rng.integers(0, 3))]]
    values = rng.normal(0, 10 ** float(rng.integers(-3, 6)), size=shape)
    if seed % 3 == 0:
        values = np.round(values)  # integers in the JSON
    key = "instances" if seed % 2 else "inputs"
    body = _padded({key: values.tolist() if seed % 3 else values.astype(int).tolist()})
    fast = JsonArrays().v1_rows(body)
    assert fast is not None, body[:200]
    rows, fmt = _general(body)
    assert fmt == fast[1] and fast[0].dtype == np.float64
    np.testing.assert_array_equal(fast[0], np.asarray(rows, dtype=np.float64))


AWKWARD = [
    {"instances": [[1, 2], [3, [4, 5]]]},  # a leaf that is an array
    {"instances": [[1, 2], [3]]},  # ragged
    {"instances": [[[1, 2], [3, 4]], [[5, 6], [7]]]},  # ragged deeper down
    {"instances": [[[1, 2], [3, 4]], [[5, 6, 7], [8]]]},  # ragged, same total per row
    {"instances": []}, {"instances": [[]]},
    {"instances": [["a", "b"]]}, {"instances": [[1, None]]}, {"instances": [[True, 1]]},
    {"instances": [{"inputs": [1, 2]}]},  # named instance
    {"inputs": {"x": [[1, 2]]}},  # named inputs
    {"instances": [[1, 2]], "inputs": [[1, 2]]}, {"rows": [[1, 2]]}, {"instances": 3},
]


@pytest.mark.parametrize("envelope", AWKWARD, ids=[json.dumps(e)[:40] for e in AWKWARD])
def test_anything_but_a_plain_rectangle_of_numbers_goes_the_general_way(envelope: dict) -> None:
    assert JsonArrays().v1_rows(_padded(envelope)) is None


@pytest.mark.parametrize("body", [b"[" * 3000, b"[" * 3000 + b"]" * 3000,  # too deep for simdjson
                                  b'{"instances": ' + b"[" * 2000 + b"1" + b"]" * 2000 + b"}",
                                  b"not json " * 300, b'{"instances": [[1e400]]' + b" " * 3000,
                                  b"[1, 2, 3]" + b" " * 3000])
def test_invalid_json_and_numbers_out_of_range_go_the_general_way(body: bytes) -> None:
    assert JsonArrays().v1_rows(body) is None


def test_small_bodies_go_the_general_way_where_it_is_faster() -> None:
    small = orjson.dumps({"instances": [[1.0] * 64]})
    assert len(small) < MIN_BODY_BYTES and JsonArrays().v1_rows(small) is None


def test_one_parser_answers_body_after_body_with_its_own_values() -> None:
    """simdjson's values live until the parser's next parse: each answer must be a copy."""
    arrays = JsonArrays()
    answers = [arrays.v1_rows(_padded({"instances": np.full((40, 64), float(i)).tolist()}))[0]
               for i in range(5)]
    for i, answer in enumerate(answers):
        assert (answer == i).all()


@pytest.mark.parametrize("envelope", [
    {"instances": np.arange(64 * 40, dtype=float).reshape(40, 64).tolist()},  # wrong row shape
    {"instances": np.ones((40, 8, 8)).tolist()},  # fits
    {"instances": np.full((40, 8, 8), 3e39).tolist()},  # beyond float32: infinity
    {"instances": np.ones((1100, 8, 8)).tolist()},  # too many rows
])
def test_a_model_sees_the_same_batch_or_the_same_error_either_way(envelope: dict) -> None:
    body = _padded(envelope)
    fast = JsonArrays().v1_rows(body)
    assert fast is not None

    def outcome(rows: object) -> object:
        try:
            return to_batch(rows, IMAGE, max_rows=1024)
        except RequestError as exc:
            return (exc.status, str(exc))

    fast_outcome, general_outcome = outcome(fast[0]), outcome(_general(body)[0])
    if isinstance(general_outcome, np.ndarray):
        assert fast_outcome.dtype == np.float32
        np.testing.assert_array_equal(fast_outcome, general_outcome)
    else:
        assert fast_outcome == general_outcome


def test_integer_category_codes_read_as_floats_are_the_same_categories() -> None:
    rows = [[30, 2, 1.5]] * 100
    body = _padded({"instances": rows})
    fast = JsonArrays().v1_rows(body)
    assert fast is not None
    np.testing.assert_array_equal(to_batch(fast[0], TABLE, 1024), to_batch(_general(body)[0], TABLE, 1024))


def test_a_text_model_sent_numbers_is_told_it_takes_strings() -> None:
    text = DataSchema(input_shape=(), classes=["neg", "pos"], dtype="string", source="test-text")
    fast = JsonArrays().v1_rows(_padded({"instances": list(range(600))}))
    with pytest.raises(RequestError, match="this model takes one string per row"):
        to_batch(fast[0], text, 1024)


def _v2(data: object, shape: list[int], **extra: object) -> dict:
    return {"id": "r-1", **extra, "inputs": [{"name": "inputs", "shape": shape, "datatype": "FP32",
                                             "data": data, "parameters": {"note": "x"}}]}


V2_CASES = [
    _v2(np.ones(40 * 64).tolist(), [40, 8, 8]),  # flat data
    _v2(np.arange(40 * 64, dtype=float).reshape(40, 8, 8).tolist(), [40, 8, 8],
        outputs=[{"name": "probabilities", "parameters": {"binary_data": True}}]),  # nested
    _v2(np.ones(40 * 64 - 1).tolist(), [40, 8, 8]),  # one value short
    _v2(np.ones(40 * 64).tolist(), [40, 64]),  # the wrong shape for the model
    _v2(np.full(40 * 64, 1e39).tolist(), [40, 8, 8]),  # beyond float32
]


@pytest.mark.parametrize("envelope", V2_CASES, ids=range(len(V2_CASES)))
def test_a_v2_body_reads_the_same_either_way(envelope: dict) -> None:
    from maas.serving.oip import parse_v2_tensor, v2_reply_options

    body = orjson.dumps(envelope)
    fast = JsonArrays().v2_body(body)
    assert fast is not None and isinstance(fast["inputs"][0]["data"], np.ndarray)
    general = orjson.loads(body)
    assert {k: v for k, v in fast.items() if k != "inputs"} == {k: v for k, v in general.items()
                                                                 if k != "inputs"}
    assert v2_reply_options(fast) == v2_reply_options(general)

    def outcome(parsed: dict) -> object:
        try:
            return to_batch(parse_v2_tensor(parsed, IMAGE), IMAGE, max_rows=1024)
        except RequestError as exc:
            return (exc.status, str(exc))

    fast_outcome, general_outcome = outcome(fast), outcome(general)
    if isinstance(general_outcome, np.ndarray):
        np.testing.assert_array_equal(fast_outcome, general_outcome)
    else:
        assert fast_outcome == general_outcome


@pytest.mark.parametrize("envelope", [
    _v2(["a"] * 3000, [3000]), _v2([[1.0] * 64, [1.0] * 63] * 20, [40, 64]),
    {"inputs": [_v2([1.0] * 3000, [3000])["inputs"][0]] * 2}, {"inputs": "x" * 3000},
    {"inputs": [{"name": "inputs", "data": {"a": [1.0] * 3000}}]},
], ids=["strings", "ragged", "two tensors", "not a list", "data not an array"])
def test_a_v2_body_of_anything_else_goes_the_general_way(envelope: dict) -> None:
    assert JsonArrays().v2_body(orjson.dumps(envelope)) is None
