"""Missing values and categorical columns (data.missing, data.categorical_columns): the policies,
statistics from the training split only, the layers inside the model, the loader's allow-list,
and what serving and batch scoring accept. No Ray."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from maas.config import DataConfig, ModelConfig, OptimizerConfig, TrainJobConfig
from maas.data import DataSchema, feature_stats, load_dataset
from maas.errors import ConfigError, DataError, IntegrityError, ModelError, RequestError
from maas.schema import validate_config

PLANS = ["basic", "plus", "pro"]


def _frame(rows: int = 240, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    plan = rng.choice(PLANS, rows).astype(object)
    age = np.arange(rows, dtype=float)  # ascending: the training split's statistics differ from all rows'
    spend = rng.normal(50, 10, rows)
    label = np.where((plan == "pro") | (age > rows / 2), "yes", "no")
    age[rng.random(rows) < 0.1] = np.nan
    plan[rng.random(rows) < 0.05] = None
    return pd.DataFrame({"age": age, "plan": plan, "spend": spend, "label": label})


def _csv(tmp_path: Path, frame: pd.DataFrame | None = None, name: str = "t.csv") -> str:
    path = tmp_path / name
    (_frame() if frame is None else frame).to_csv(path, index=False)
    return str(path)


def _cfg(path: str, **fields) -> DataConfig:
    return DataConfig(source="csv", path=path, **fields)


# --- data.missing ------------------------------------------------------------------------------


def test_the_default_refuses_an_empty_value_with_todays_message(tmp_path: Path) -> None:
    path = _csv(tmp_path, _frame().drop(columns=["plan"]))
    with pytest.raises(DataError, match=r"row\(s\) hold NaN or infinity in column\(s\) 'age' \(first at "
                                        r"row \d+\); fix or drop them before training \(or set data.missing"):
        load_dataset(_cfg(path))


def test_an_empty_category_is_refused_by_default(tmp_path: Path) -> None:
    frame = _frame()
    frame["age"] = frame["age"].fillna(1.0)
    with pytest.raises(DataError, match=r"empty values in categorical column\(s\) 'plan'"):
        load_dataset(_cfg(_csv(tmp_path, frame), categorical_columns=["plan"]))


def test_drop_removes_the_rows_and_says_how_many(tmp_path: Path, capsys) -> None:
    frame = _frame()
    empty = int((frame["age"].isna() | frame["plan"].isna()).sum())
    splits = load_dataset(_cfg(_csv(tmp_path, frame), missing="drop", categorical_columns=["plan"]))
    assert sum(splits.sizes().values()) == len(frame) - empty
    assert f"dropped {empty} of {len(frame)} rows" in capsys.readouterr().out
    assert splits.schema.preprocessing["rows_dropped"] == empty
    assert not splits.schema.accepts_missing  # the model fills nothing: serving refuses gaps


@pytest.mark.parametrize("policy, reduce", [("impute_mean", np.nanmean), ("impute_median", np.nanmedian)])
def test_fill_values_come_from_the_training_split_only(tmp_path: Path, policy: str, reduce) -> None:
    frame = _frame().drop(columns=["plan"])
    splits = load_dataset(_cfg(_csv(tmp_path, frame), missing=policy))
    fill = splits.schema.preprocessing["fill"]
    assert np.isnan(splits.x_train).any()  # kept: the model fills them
    np.testing.assert_allclose(fill, reduce(splits.x_train.astype(np.float64), axis=0), rtol=1e-6)
    assert abs(fill[0] - reduce(frame["age"])) > 0.1  # not the statistic of every row
    assert splits.schema.accepts_missing


def test_normalisation_statistics_leave_empty_values_out() -> None:
    x = np.array([[1.0, np.nan], [3.0, 4.0], [np.nan, 8.0]], dtype=np.float32)
    mean, variance = feature_stats(x)
    np.testing.assert_allclose(mean, [2.0, 6.0])
    np.testing.assert_allclose(variance, [1.0, 4.0])


@pytest.mark.parametrize("policy", ["refuse", "drop", "impute_mean"])
def test_infinity_is_refused_under_every_policy(tmp_path: Path, policy: str) -> None:
    frame = _frame().drop(columns=["plan"])
    frame.loc[3, "spend"] = np.inf
    with pytest.raises(DataError, match="infinity"):
        load_dataset(_cfg(_csv(tmp_path, frame), missing=policy))


def test_a_column_empty_in_the_whole_training_split_cannot_be_imputed(tmp_path: Path) -> None:
    frame = _frame().drop(columns=["plan"])
    frame["age"] = np.nan
    with pytest.raises(DataError, match="column 'age' has no value in any of the .* training split"):
        load_dataset(_cfg(_csv(tmp_path, frame), missing="impute_median"))


def test_drop_that_leaves_nothing_says_so(tmp_path: Path) -> None:
    frame = _frame().drop(columns=["plan"])
    frame["age"] = np.nan
    with pytest.raises(DataError, match="leaves nothing to train on"):
        load_dataset(_cfg(_csv(tmp_path, frame), missing="drop"))


@pytest.mark.parametrize("raw, message", [
    ({"source": "digits", "missing": "drop"}, "'digits' is built in"),
    ({"source": "csv", "path": "x.csv", "text_column": "t", "missing": "impute_mean"}, "rows are text"),
    ({"source": "npz", "path": "x.npz", "categorical_columns": ["a"]}, "csv and parquet tables"),
    ({"source": "csv", "path": "x.csv", "categorical_columns": ["label"]}, "names the label column"),
    ({"source": "csv", "path": "x.csv", "categorical_columns": ["a", "a"]}, r"\['a'\] more than once"),
    ({"source": "csv", "path": "x.csv", "missing": "mean"}, "data.missing"),
])
def test_config_mistakes_fail_on_the_driver(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config(TrainJobConfig, {"data": raw})


# --- categorical columns -------------------------------------------------------------------------


def test_a_string_column_not_listed_is_refused_with_the_way_out(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="feature column 'plan' is not numeric .* data.categorical_columns"):
        load_dataset(_cfg(_csv(tmp_path), missing="impute_mean"))


def test_a_listed_column_the_file_lacks_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"names \['colour'\], which data file .* lacks; its feature "
                                        "columns are: age, plan, spend"):
        load_dataset(_cfg(_csv(tmp_path), categorical_columns=["colour"], missing="drop"))


def test_a_table_travels_as_text_cells_with_vocabularies_from_the_training_split(tmp_path: Path) -> None:
    frame = _frame()
    frame.loc[frame.index[-1], "plan"] = "only-in-one-row"  # at most in one split
    splits = load_dataset(_cfg(_csv(tmp_path, frame), missing="impute_median", categorical_columns=["plan"]))
    schema = splits.schema
    assert schema.is_table and schema.string_input and schema.input_shape == (3,)
    assert schema.feature_names == ["age", "plan", "spend"]
    fitted = schema.preprocessing
    assert fitted["numeric_columns"] == ["age", "spend"] and fitted["encoding"] == "one_hot"
    train_plans = splits.x_train[:, 1].tolist()
    counts = {p: train_plans.count(p) for p in set(train_plans)}
    assert fitted["categorical"]["plan"] == sorted(counts, key=lambda p: (-counts[p], p))  # "" included
    assert "" in fitted["categorical"]["plan"]  # a missing plan is a category of its own
    assert ("only-in-one-row" in fitted["categorical"]["plan"]) == ("only-in-one-row" in train_plans)
    numbers = splits.x_train[:, [0, 2]].astype(np.float64)  # "nan" parses: the empty cells
    np.testing.assert_allclose(fitted["fill"], np.nanmedian(numbers, axis=0), rtol=1e-6)
    np.testing.assert_allclose(fitted["mean"], np.nanmean(numbers, axis=0), rtol=1e-5)
    assert DataSchema.from_dict(json.loads(json.dumps(schema.to_dict()))) == schema


def test_vocabularies_are_capped_and_integer_codes_are_categories(tmp_path: Path) -> None:
    frame = pd.DataFrame({"code": [1, 2, 2, 3, 3, 3] * 20, "x": np.arange(120.0), "label": [0, 1] * 60})
    splits = load_dataset(DataConfig(source="parquet", path=_parquet(tmp_path, frame),
                                     categorical_columns=["code"], max_categories=2))
    assert splits.schema.categorical == {"code": ["3", "2"]}
    assert set(splits.x_train[:, 0]) <= {"1", "2", "3"}


def _parquet(tmp_path: Path, frame: pd.DataFrame) -> str:
    path = tmp_path / "t.parquet"
    frame.to_parquet(path)
    return str(path)


# --- inside the model --------------------------------------------------------------------------


def _table_splits(tmp_path: Path, **fields):
    fields = {"missing": "impute_median", "categorical_columns": ["plan"], **fields}
    return load_dataset(_cfg(_csv(tmp_path), **fields))


def _trained(splits, epochs: int = 2):
    from maas.models import build_model, compile_model

    model = build_model(ModelConfig(hidden_units=[8], dropout=0.0), splits.schema,
                        *feature_stats(splits.x_train))
    compile_model(model, OptimizerConfig(learning_rate=0.01))
    model.fit(splits.x_train.astype(str), splits.y_train, epochs=epochs, batch_size=32, verbose=0)
    return model


def _keras_bytes(model, tmp_path: Path) -> bytes:
    from maas.tfkeras import save_model

    save_model(model, str(tmp_path / "model.keras"))
    return (tmp_path / "model.keras").read_bytes()


def _predict(model, rows) -> np.ndarray:
    return np.asarray(model(np.array(rows, dtype=object), training=False))


def test_an_imputing_numeric_model_fills_nan_with_the_training_value(tmp_path: Path) -> None:
    from maas.models import build_model

    splits = load_dataset(_cfg(_csv(tmp_path, _frame().drop(columns=["plan"])), missing="impute_mean"))
    model = build_model(ModelConfig(hidden_units=[4]), splits.schema, *feature_stats(splits.x_train))
    fill = splits.schema.preprocessing["fill"]
    with_gap = np.array([[np.nan, 55.0]], np.float32)
    filled = np.array([[fill[0], 55.0]], np.float32)
    np.testing.assert_allclose(model(with_gap), model(filled), rtol=1e-6)
    assert np.isfinite(np.asarray(model(with_gap))).all()


@pytest.mark.parametrize("encoding", ["one_hot", "embedding"])
def test_a_table_model_round_trips_through_the_safe_loader_and_fills_and_looks_up(
        tmp_path: Path, encoding: str) -> None:
    from maas.artifacts.keras_loader import load_keras_bytes

    splits = _table_splits(tmp_path, categorical_encoding=encoding)
    model = _trained(splits)
    loaded = load_keras_bytes(_keras_bytes(model, tmp_path), "model.keras", "test model")
    fill_age = splits.schema.preprocessing["fill"][0]
    rows = [["nan", "pro", "51.5"], [repr(fill_age), "pro", "51.5"], ["", "pro", "51.5"],
            ["30", "never-seen", "51.5"], ["30", "another-unseen", "51.5"], ["30", "basic", "51.5"]]
    original, reloaded = _predict(model, rows), _predict(loaded, rows)
    assert np.isfinite(reloaded).all()  # (a NaN left unfilled would have poisoned training too)
    np.testing.assert_allclose(reloaded, original, rtol=1e-6)
    np.testing.assert_allclose(reloaded[0], reloaded[1], rtol=1e-6)  # NaN -> the training median
    np.testing.assert_allclose(reloaded[0], reloaded[2], rtol=1e-6)  # "" is NaN too
    np.testing.assert_allclose(reloaded[3], reloaded[4], rtol=1e-6)  # both unseen: the unknown bucket
    assert not np.allclose(reloaded[3], reloaded[5])  # a known plan is not the unknown bucket


def test_several_workers_feed_the_string_matrix_through_tf_data(tmp_path: Path) -> None:
    """With more than one worker, training builds a tf.data pipeline per worker (the integration
    test trains on one, Keras' array feed): a table's text cells go through it unchanged."""
    from maas.training import _as_model_input, _make_dataset_fn

    splits = _table_splits(tmp_path)
    model = _trained(splits, epochs=1)
    dataset = _make_dataset_fn(splits.x_train, splits.y_train, 16, seed=0)(None)
    cells, labels = next(iter(dataset))
    assert cells.dtype.name == "string" and tuple(cells.shape) == (16, 3) and tuple(labels.shape) == (16,)
    history = model.fit(dataset, steps_per_epoch=3, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert _as_model_input(splits.x_val).dtype.kind == "U"


def test_the_one_hot_lookup_gives_unseen_categories_the_unknown_column(tmp_path: Path) -> None:
    from maas.tfkeras import keras

    splits = _table_splits(tmp_path)
    model = _trained(splits, epochs=1)
    lookup = keras().Model(model.input, model.get_layer("one_hot_0").output)
    vocabulary = splits.schema.categorical["plan"]
    encoded = np.asarray(lookup(np.array([["1", "zzz", "1"], ["1", vocabulary[0], "1"]], dtype=object)))
    assert encoded.shape == (2, len(vocabulary) + 1)
    assert encoded[0].tolist() == [1.0] + [0.0] * len(vocabulary)  # index 0: out of vocabulary
    assert encoded[1, 1] == 1.0


def test_the_savedmodel_takes_the_string_matrix_and_matches_keras(tmp_path: Path) -> None:
    from maas.artifacts.savedmodel import export_checked

    splits = _table_splits(tmp_path)
    model = _trained(splits, epochs=1)
    export = export_checked(model, splits.x_val, "test model")
    assert export.block["inputs"]["inputs"] == {"dtype": "string", "shape": [-1, 3]}
    rows = np.array([["", "never-seen", "40"], ["12", "pro", "nan"]], dtype=object)
    served = export.predictor.predict(rows)
    assert np.isfinite(served).all()
    np.testing.assert_allclose(served, _predict(model, rows), rtol=1e-5)


def test_a_table_needs_an_mlp(tmp_path: Path) -> None:
    from maas.models import check_compatible

    schema = _table_splits(tmp_path).schema
    for kind in ("cnn", "text"):
        with pytest.raises(ModelError, match="use model.type=mlp"):
            check_compatible(ModelConfig(type=kind), schema)


# --- the loader's allow-list -----------------------------------------------------------------------


def _archive_config(content: bytes) -> dict:
    with zipfile.ZipFile(__import__("io").BytesIO(content)) as archive:
        return json.loads(archive.read("config.json"))


def _with_config(content: bytes, config: dict) -> bytes:
    import io

    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(content)) as source, zipfile.ZipFile(out, "w") as target:
        for name in source.namelist():
            target.writestr(name, json.dumps(config) if name == "config.json" else source.read(name))
    return out.getvalue()


@pytest.fixture(scope="module")
def table_archive(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    tmp_path = tmp_path_factory.mktemp("archive")
    return _keras_bytes(_trained(_table_splits(tmp_path, categorical_encoding="embedding"), epochs=1),
                        tmp_path)


def test_the_allow_list_takes_a_table_model(table_archive: bytes) -> None:
    from maas.artifacts.keras_safety import check_keras_archive

    check_keras_archive(table_archive, "table model")
    classes = {layer["class_name"] for layer in _archive_config(table_archive)["config"]["layers"]}
    assert {"TakeColumns", "ParseNumbers", "FillMissing", "StringLookup", "Embedding",
            "Concatenate"} <= classes


@pytest.mark.parametrize("field, value, message", [
    ("module", "maas_evil", "not an allowed Keras built-in"),  # our class name, another module
    ("registered_name", "evil>TakeColumns", "registered custom object"),
    ("class_name", "Lambda", "not an allowed Keras built-in"),
])
def test_look_alikes_of_our_layers_are_refused(table_archive: bytes, field: str, value: str,
                                               message: str) -> None:
    from maas.artifacts.keras_safety import check_keras_archive

    config = _archive_config(table_archive)
    layer = next(layer for layer in config["config"]["layers"] if layer["class_name"] == "TakeColumns")
    layer[field] = value
    with pytest.raises(IntegrityError, match=message):
        check_keras_archive(_with_config(table_archive, config), "tampered")


def test_a_lookup_vocabulary_naming_a_file_is_refused(table_archive: bytes) -> None:
    from maas.artifacts.keras_safety import check_keras_archive

    config = _archive_config(table_archive)
    layer = next(layer for layer in config["config"]["layers"] if layer["class_name"] == "StringLookup")
    layer["config"]["vocabulary"] = "/etc/passwd"
    with pytest.raises(IntegrityError, match="vocabulary names a file"):
        check_keras_archive(_with_config(table_archive, config), "tampered")


# --- serving: what a request may hold --------------------------------------------------------------


def _numeric_schema(missing: str | None) -> DataSchema:
    return DataSchema(input_shape=(2,), classes=[0, 1], feature_names=["a", "b"],
                      preprocessing={"missing": missing, "fill": [0.0, 0.0]} if missing else None)


TABLE = DataSchema(input_shape=(3,), classes=["no", "yes"], dtype="table",
                   feature_names=["age", "plan", "spend"],
                   preprocessing={"missing": "impute_median", "categorical": {"plan": PLANS}})
STRICT_TABLE = DataSchema(**{**TABLE.__dict__, "preprocessing": {"missing": "refuse",
                                                                   "categorical": {"plan": PLANS}}})


def test_an_imputing_model_takes_null_and_nan_but_not_infinity() -> None:
    from maas.serving.inputs import to_batch

    batch = to_batch([[1.0, None]], _numeric_schema("impute_mean"), 10)
    assert batch.dtype == np.float32 and np.isnan(batch[0, 1]) and batch[0, 0] == 1.0
    assert np.isnan(to_batch(np.array([[np.nan, 1.0]]), _numeric_schema("impute_mean"), 10)[0, 0])
    with pytest.raises(RequestError, match="row 0 holds infinity"):
        to_batch(np.array([[np.inf, 1.0]]), _numeric_schema("impute_mean"), 10)
    with pytest.raises(RequestError, match="every value must be a number"):
        to_batch([[1.0, "x"]], _numeric_schema("impute_mean"), 10)


@pytest.mark.parametrize("schema", [_numeric_schema(None), _numeric_schema("drop")])
def test_other_models_refuse_missing_values_as_before(schema: DataSchema) -> None:
    from maas.serving.inputs import to_batch

    with pytest.raises(RequestError, match="row 0 holds null; this model takes no missing values"):
        to_batch([[1.0, None]], schema, 10)
    with pytest.raises(RequestError, match="NaN or infinity"):
        to_batch(np.array([[np.nan, 1.0]]), schema, 10)


def test_a_table_model_takes_lists_or_named_rows_as_text_cells() -> None:
    from maas.serving.inputs import to_batch

    batch = to_batch([[41.5, "pro", None], {"age": None, "plan": "never-seen", "spend": 3},
                      {"plan": 7, "spend": "12.5"}, ["41.5", "", 1e-7]], TABLE, 10)
    assert batch.tolist() == [["41.5", "pro", "nan"], ["nan", "never-seen", "3.0"],
                              ["nan", "7", "12.5"], ["41.5", "", "1e-07"]]


@pytest.mark.parametrize("rows, schema, message", [
    ([[41.5, "pro"]], TABLE, r"row 0 must hold 3 values \(columns \['age', 'plan', 'spend'\]\), got 2"),
    ([{"age": 1, "colour": "red"}], TABLE, r"row 0 names columns this model does not have: \['colour'\]"),
    ([[1, "pro", "lots"]], TABLE, "row 0, column 'spend' holds 'lots'; a number is expected"),
    ([[True, "pro", 1]], TABLE, "row 0, column 'age' holds True; a number is expected"),
    ([[1, "pro", float("inf")]], TABLE, "column 'spend' holds infinity"),
    ([[1, ["pro"], 1]], TABLE, "column 'plan' holds \\['pro'\\]; a category"),
    ([[None, "pro", 1]], STRICT_TABLE, "row 0, column 'age' is missing; this model takes no missing"),
    ([[1, None, 1]], STRICT_TABLE, "row 0, column 'plan' is missing"),
    (["41.5,pro,1"], TABLE, "row 0 must hold 3 values"),
])
def test_a_table_model_names_the_bad_cell(rows, schema: DataSchema, message: str) -> None:
    from maas.serving.inputs import to_batch

    with pytest.raises(RequestError, match=message):
        to_batch(rows, schema, 10)


def test_v1_and_v2_describe_a_table_model_as_one_string_input() -> None:
    from maas.serving.oip import parse_v2_tensor, v2_model_metadata
    from maas.serving.tfserving import tf_serving_metadata

    status = {"name": "t", "version": 1, "served_versions": [1], "schema": TABLE.to_dict()}
    signature = tf_serving_metadata(status)["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["inputs"]["dtype"] == "DT_STRING"
    assert v2_model_metadata(status)["inputs"][0] == {"name": "inputs", "datatype": "BYTES", "shape": [-1, 3]}
    body = {"inputs": [{"name": "inputs", "shape": [2, 3], "datatype": "BYTES",
                        "data": ["41.5", "pro", "", "1", "basic", "2"]}]}
    assert parse_v2_tensor(body, TABLE) == [["41.5", "pro", ""], ["1", "basic", "2"]]
    body["inputs"][0]["datatype"] = "FP32"
    with pytest.raises(RequestError, match="expected BYTES"):
        parse_v2_tensor(body, TABLE)


def test_a_loaded_table_model_warms_up_and_predicts_in_one_graph(tmp_path: Path) -> None:
    from maas.serving.inputs import to_batch
    from maas.serving.model import LoadedModel

    splits = _table_splits(tmp_path)
    model = _trained(splits, epochs=1)
    loaded = LoadedModel("t", 1, splits.schema, model, {})
    assert loaded.predict(loaded.example_batch()).shape == (1, 2)
    batch = to_batch([[None, "never-seen", 40], {"age": 12, "plan": "pro", "spend": None}], splits.schema, 10)
    np.testing.assert_allclose(loaded.predict(batch), _predict(model, batch.tolist()), rtol=1e-6)


# --- batch scoring and optimise --------------------------------------------------------------------


def test_batch_scoring_reads_a_tables_columns_as_the_model_was_trained() -> None:
    import pyarrow as pa

    from maas.scoring import feature_columns, first_bad_row, rows_to_input

    columns = {"id": "int64", "age": "double", "plan": "string", "spend": "double"}
    features = feature_columns(TABLE, columns, keep=("id",))
    assert features.columns == ("age", "plan", "spend") and features.categorical == ("plan",)
    batch = {"age": np.array([41.5, np.nan]), "plan": np.array(["pro", None], dtype=object),
             "spend": np.array([3.0, 4.0])}
    assert rows_to_input(batch, features).tolist() == [["41.5", "pro", "3.0"], ["nan", "", "4.0"]]
    table = pa.table({"age": [1.0, None, 2.0], "plan": ["pro", None, "x"], "spend": [1.0, 2.0, float("inf")]})
    assert first_bad_row(table.to_batches(), features) == "row 2, column 'spend' (inf)"
    strict = feature_columns(STRICT_TABLE, columns, keep=("id",))
    assert first_bad_row(table.to_batches(), strict) == "row 1, column 'age' (None)"
    with pytest.raises(DataError, match="categorical columns must be text or integer codes; not: plan"):
        feature_columns(TABLE, {**columns, "plan": "double"})


def test_onnx_and_tflite_refuse_a_table_model_and_say_what_works() -> None:
    from maas.optimize.onnx_export import refuse_text_models

    for target in ("ONNX", "TFLite"):
        with pytest.raises(ModelError, match=f"no {target} variant is made. What works instead: the "
                                             "'savedmodel' and 'pruned' variants"):
            refuse_text_models(object(), TABLE, "model 't' version 1", target)
