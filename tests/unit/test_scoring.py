"""Batch scoring's checks, without Ray: which columns feed the model, the first bad value, and the
output columns (maas/scoring.py)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from maas.data import DataSchema
from maas.errors import ConfigError, DataError
from maas.scoring import (
    Features,
    actor_cpus,
    auto_batch_size,
    feature_columns,
    first_bad_row,
    input_format,
    pool_size,
    rows_to_input,
    scored_columns,
)

IMAGE = DataSchema(input_shape=(2, 2), classes=[0, 1, 2])
TABULAR = DataSchema(input_shape=(2,), classes=["no", "yes"], feature_names=["age", "income"])
TEXT = DataSchema(input_shape=(), classes=["negative", "positive"], dtype="string", feature_names=["review"])


def test_image_models_take_every_numeric_column_but_the_kept_ones_in_order() -> None:
    columns = {"id": "int64", "p0": "float", "p1": "double", "p2": "int32", "p3": "float"}
    features = feature_columns(IMAGE, columns, keep=("id",))
    assert features == Features(("p0", "p1", "p2", "p3"), (2, 2))
    with pytest.raises(DataError, match="5 feature columns; the model takes 4 .*--keep"):
        feature_columns(IMAGE, columns)


def test_tabular_models_take_their_named_features_and_name_what_is_missing_or_wrong() -> None:
    assert feature_columns(TABULAR, {"income": "double", "age": "int64", "x": "string"}).columns == \
        ("age", "income")
    with pytest.raises(DataError, match="lacks the model's feature columns income"):
        feature_columns(TABULAR, {"age": "int64"})
    with pytest.raises(DataError, match="numeric; not: income \\(string\\)"):
        feature_columns(TABULAR, {"age": "int64", "income": "string"})
    with pytest.raises(DataError, match="--keep names columns the input lacks: row_id"):
        feature_columns(TABULAR, {"age": "int64", "income": "double"}, keep=("row_id",))


def test_text_models_take_their_one_text_column() -> None:
    assert feature_columns(TEXT, {"id": "int64", "review": "string"}) == Features(("review",), (), True)
    with pytest.raises(DataError, match="one text column"):
        feature_columns(TEXT, {"id": "int64"})


def test_the_first_bad_value_is_named_by_row_and_column() -> None:
    features = Features(("a", "b"), (2,))
    batches = [pa.record_batch({"a": [1.0, 2.0], "b": [1.0, 2.0]}),
               pa.record_batch({"a": [3.0, 4.0], "b": [5.0, float("inf")]}),
               pa.record_batch({"a": [None, 1.0], "b": [1.0, 1.0]})]
    assert first_bad_row(batches, features) == "row 3, column 'b' (inf)"
    assert first_bad_row(batches[2:], features) == "row 0, column 'a' (None)"
    assert first_bad_row([pa.record_batch({"a": [float("nan")], "b": [1.0]})], features) \
        == "row 0, column 'a' (nan)"
    assert first_bad_row(batches[:1], features) is None


def test_rows_become_the_models_input_and_outputs_carry_label_probabilities_and_version() -> None:
    batch = {"id": np.array([7, 8]), "p0": np.array([1, 2]), "p1": np.array([3, 4]),
             "p2": np.array([5, 6]), "p3": np.array([7, 8])}
    x = rows_to_input(batch, Features(("p0", "p1", "p2", "p3"), (2, 2)))
    assert x.dtype == np.float32 and x.shape == (2, 2, 2) and x[1].tolist() == [[2, 4], [6, 8]]
    assert x.flags.c_contiguous  # what the runtimes take without another copy
    probabilities = np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]], np.float32)
    out = scored_columns(batch, probabilities, [0, 1, 2], 5, keep=("id",))
    assert out["id"].tolist() == [7, 8] and out["prediction"].tolist() == ["1", "0"]
    assert out["probability_1"].tolist() == pytest.approx([0.7, 0.3])
    assert out["model_version"].tolist() == [5, 5]


def test_the_format_comes_from_the_suffix_or_the_flag() -> None:
    assert input_format("rows.parquet") == "parquet" and input_format("s3://b/rows.csv") == "csv"
    assert input_format("some/dir") == "parquet" and input_format("x.txt", "csv") == "csv"
    with pytest.raises(ConfigError, match="cannot tell its format"):
        input_format("rows.json")


def test_the_default_batch_holds_about_eight_mib_of_input_within_bounds() -> None:
    digits = Features(tuple(f"p{i}" for i in range(64)), (8, 8))
    cifar = Features(tuple(f"p{i}" for i in range(3072)), (32, 32, 3))
    one_column = Features(("x",), (1,))
    assert auto_batch_size(digits) == 32768  # 64 float32 per row
    assert auto_batch_size(cifar) == (8 << 20) // (3072 * 4)
    assert auto_batch_size(one_column) == 65536  # the upper bound
    assert auto_batch_size(Features(tuple(f"c{i}" for i in range(50000)), (50000,))) == 64  # the lower
    assert auto_batch_size(Features(("review",), (), text=True)) == 4096  # as before: LSTMs grow


def test_the_actor_pool_leaves_a_cpu_for_reads_and_writes() -> None:
    assert pool_size(None, 4) == 3 and pool_size(None, 2) == 1 and pool_size(None, 1) == 1
    assert pool_size(2, 4) == 2
    with pytest.raises(ConfigError, match="--actors 2: the cluster has 2 CPUs .* use at most 1"):
        pool_size(2, 2)
    with pytest.raises(ConfigError, match="expected at least 1"):
        pool_size(0, 4)
    assert pool_size(1, 1) == 1 and actor_cpus(1) == 0 and actor_cpus(2) == 1  # 1 CPU: shared
    with pytest.raises(ConfigError, match="--actors 2: the cluster has 1 CPU.* use 1"):
        pool_size(2, 1)
