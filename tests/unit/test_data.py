from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from maas.config import DataConfig
from maas.data import DataError, DataSchema, feature_stats, load_dataset, shard_indices


def test_digits_is_the_embedded_default() -> None:
    splits = load_dataset(DataConfig())
    assert splits.schema.input_shape == (8, 8)
    assert splits.schema.classes == list(range(10))
    assert splits.schema.is_image
    sizes = splits.sizes()
    assert sum(sizes.values()) == 1797
    assert sizes["test"] == pytest.approx(0.15 * 1797, abs=2)
    assert splits.x_train.dtype == np.float32


def test_splits_are_disjoint_and_deterministic() -> None:
    a, b = load_dataset(DataConfig()), load_dataset(DataConfig())
    np.testing.assert_array_equal(a.x_test, b.x_test)
    train_rows = {r.tobytes() for r in a.x_train.reshape(len(a.x_train), -1)}
    test_rows = [r.tobytes() for r in a.x_test.reshape(len(a.x_test), -1)]
    # digits has a few duplicate images; nearly all test rows must be unseen in training
    assert sum(r in train_rows for r in test_rows) <= 3


def test_breast_cancer_is_tabular_with_feature_names() -> None:
    splits = load_dataset(DataConfig(source="breast_cancer"))
    assert splits.schema.input_shape == (30,)
    assert splits.schema.feature_names[0] == "mean radius"
    assert splits.schema.num_classes == 2


def _frame(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n),
                         "label": rng.choice(["cat", "dog"], size=n)})


def test_csv_with_string_labels(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    _frame().to_csv(path, index=False)
    splits = load_dataset(DataConfig(source="csv", path=str(path)))
    assert splits.schema.classes == ["cat", "dog"]
    assert splits.schema.feature_names == ["a", "b"]
    assert set(np.unique(splits.y_train)) == {0, 1}


def test_parquet_with_named_label(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    _frame().rename(columns={"label": "target"}).to_parquet(path)
    splits = load_dataset(DataConfig(source="parquet", path=str(path), label_column="target"))
    assert splits.schema.input_shape == (2,)


def test_npz_images(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.random.rand(40, 4, 4), y=np.arange(40) % 2)
    splits = load_dataset(DataConfig(source="npz", path=str(path)))
    assert splits.schema.input_shape == (4, 4)


def _bad_csv(tmp_path: Path, text: str) -> DataConfig:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    return DataConfig(source="csv", path=str(path))


@pytest.mark.parametrize("text, message", [
    ("", r"bad\.csv' is empty \(0 bytes\)"),
    ("a,b,label\n", "has a header but no rows"),
    ("a,b\n1,2\n3,4\n", "has no label column 'label'; its columns are: a, b"),
    ("a,b,label\n1,x,0\n2,3,1\n", "feature column 'b' is not numeric"),
    ("a,b,label\n1,nan,0\n2,3,1\n", "NaN or infinity in column\\(s\\) 'b'"),
    ("a,b,label\n1,inf,0\n2,3,1\n", "NaN or infinity"),
    ("label\n1\n0\n", "only the label column"),
    ("a,label\n1,0\n2,0\n3,0\n", "single class"),
])
def test_bad_csv_inputs_name_file_and_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_dataset(_bad_csv(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.csv' does not exist"):
        load_dataset(DataConfig(source="csv", path=str(tmp_path / "nope.csv")))


def test_npz_without_expected_arrays(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, features=np.zeros((4, 2)))
    with pytest.raises(DataError, match=r"lacks array\(s\) \['x', 'y'\]"):
        load_dataset(DataConfig(source="npz", path=str(path)))


def test_npz_length_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((4, 2)), y=np.zeros(3))
    with pytest.raises(DataError, match="'x' has 4 rows but 'y' has 3"):
        load_dataset(DataConfig(source="npz", path=str(path)))


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_shards_are_disjoint_and_cover_every_row(world: int) -> None:
    shards = [shard_indices(101, rank, world, seed=3) for rank in range(world)]
    combined = np.concatenate(shards)
    assert len(combined) == len(set(combined.tolist())) == 101
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1


def test_shard_rank_out_of_range() -> None:
    with pytest.raises(ValueError):
        shard_indices(10, 2, 2, seed=0)


def test_constant_features_get_unit_variance() -> None:
    x = np.array([[0.0, 1.0], [0.0, 3.0]], dtype=np.float32)
    mean, variance = feature_stats(x)
    np.testing.assert_allclose(mean, [0.0, 2.0])
    np.testing.assert_allclose(variance, [1.0, 1.0])


def test_schema_round_trips_through_json_dict() -> None:
    schema = DataSchema(input_shape=(8, 8), classes=[0, 1], source="x")
    assert DataSchema.from_dict(schema.to_dict()) == schema


def test_generated_reviews_are_text_with_two_classes() -> None:
    splits = load_dataset(DataConfig(source="reviews"))
    assert splits.schema.is_text and splits.schema.input_shape == ()
    assert splits.schema.classes == ["negative", "positive"]
    assert all(isinstance(t, str) and t for t in splits.x_train[:50])
    np.testing.assert_array_equal(load_dataset(DataConfig(source="reviews")).x_test, splits.x_test)


def test_text_column_from_csv(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    pd.DataFrame({"review": ["good", "bad", "fine", "awful"] * 10, "label": [1, 0, 1, 0] * 10}).to_csv(
        path, index=False)
    splits = load_dataset(DataConfig(source="csv", path=str(path), text_column="review"))
    assert splits.schema.is_text and splits.schema.feature_names == ["review"]


def test_empty_text_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    pd.DataFrame({"review": ["good", "", "fine", "x"], "label": [1, 0, 1, 0]}).to_csv(path, index=False)
    with pytest.raises(DataError, match="text column 'review' has 1 empty values"):
        load_dataset(DataConfig(source="csv", path=str(path), text_column="review"))


def test_declared_classes_fix_order_and_refuse_strangers(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    frame = pd.DataFrame({"a": np.arange(30.0), "label": [2, 1, 0] * 10})
    frame.to_csv(path, index=False)
    splits = load_dataset(DataConfig(source="csv", path=str(path), classes=[2, 1, 0, 3]))
    assert splits.schema.classes == [2, 1, 0, 3]
    assert splits.schema.num_classes == 4
    frame.loc[5, "label"] = 7
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"1 row\(s\) have labels \['7'\] outside the declared data.classes"):
        load_dataset(DataConfig(source="csv", path=str(path), classes=[0, 1, 2]))
