"""MNIST, Fashion-MNIST, CIFAR-10 and IMDB through Keras' cache layout, offline: small fixture files
(tests/keras_dataset_fixtures.py) in a temporary KERAS_HOME run the real loading code."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from maas import keras_datasets
from maas.config import DataConfig, ModelConfig, OptimizerConfig
from maas.data import load_dataset
from maas.errors import DataError
from maas.models import build_model, compile_model
from tests.keras_dataset_fixtures import write_fixture

SHAPES = {"mnist": (28, 28), "fashion_mnist": (28, 28), "cifar10": (32, 32, 3)}


@pytest.fixture
def keras_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("source", sorted(SHAPES))
def test_a_cached_data_set_loads_splits_and_trains(source: str, keras_home: Path) -> None:
    write_fixture(source, keras_home, rows=120)
    splits = load_dataset(DataConfig(source=source))
    rows = len(splits.x_train) + len(splits.x_val) + len(splits.x_test)
    assert rows == 120 if source != "cifar10" else rows == 6 * 20
    assert splits.schema.input_shape == SHAPES[source] and splits.schema.source == f"keras:{source}"
    assert splits.x_train.dtype == np.float32 and splits.x_train.max() > 1  # raw pixel values
    assert splits.schema.classes == list(range(10))
    assert set(np.unique(splits.y_test)) <= set(range(10)) and len(splits.x_val) and len(splits.x_test)
    kind = "cnn" if source == "cifar10" else "mlp"
    model = build_model(ModelConfig(type=kind, hidden_units=[16], conv_filters=[4, 8]), splits.schema,
                        splits.x_train.mean(axis=0), splits.x_train.var(axis=0) + 1)
    compile_model(model, OptimizerConfig())
    history = model.fit(splits.x_train, splits.y_train, epochs=1, batch_size=32, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert model.predict(splits.x_test[:4], verbose=0).shape == (4, 10)


def test_imdb_reviews_arrive_as_text_and_train_a_text_model(keras_home: Path) -> None:
    write_fixture("imdb", keras_home, rows=90)
    splits = load_dataset(DataConfig(source="imdb"))
    assert splits.schema.is_text and splits.schema.classes == ["negative", "positive"]
    assert splits.schema.source == "keras:imdb"
    assert len(splits.x_train) + len(splits.x_val) + len(splits.x_test) == 90
    review, label = splits.x_train[0], splits.y_train[0]
    assert review.startswith("i the movie was ")  # word ranks decoded with the word index
    adjective = review.split()[4]
    assert (adjective in ("great", "wonderful", "superb")) == (splits.schema.classes[label] == "positive")
    config = ModelConfig(type="text", text_encoder="lstm", vocab_size=50, sequence_length=12,
                         embedding_dim=8, lstm_units=[8], hidden_units=[8])
    model = build_model(config, splits.schema, None, None, splits.x_train)
    compile_model(model, OptimizerConfig())
    history = model.fit(splits.x_train, splits.y_train, epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_an_imdb_file_whose_object_array_would_run_code_is_refused_unrun(keras_home: Path) -> None:
    write_fixture("imdb", keras_home, rows=30)
    marker = keras_home / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    hostile = np.empty(1, dtype=object)
    hostile[0] = Payload()
    arrays = dict(np.load(keras_home / "datasets" / "imdb.npz", allow_pickle=True))
    np.savez(keras_home / "datasets" / "imdb.npz", **{**arrays, "x_test": hostile})
    assert not marker.exists()
    with pytest.raises(DataError, match="not allowed in a data set file"):
        load_dataset(DataConfig(source="imdb"))
    assert not marker.exists()


def test_offline_and_missing_the_error_names_the_file_and_where(keras_home: Path, monkeypatch) -> None:
    from maas.tfkeras import keras

    def no_network(*args, **kwargs):
        raise Exception("URL fetch failure on https://...: None -- [Errno -3] Temporary failure")

    monkeypatch.setattr(keras().utils, "get_file", no_network)
    with pytest.raises(DataError) as refused:
        load_dataset(DataConfig(source="mnist"))
    assert str(keras_home / "datasets" / "mnist.npz") in str(refused.value)
    assert "KERAS_HOME" in str(refused.value)


def test_a_cifar_batch_that_would_run_code_is_refused_unrun(keras_home: Path) -> None:
    write_fixture("cifar10", keras_home)
    marker = keras_home / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    batch = keras_home / "datasets" / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(pickle.dumps({b"data": Payload(), b"labels": [0]}))
    with pytest.raises(DataError, match="not allowed in a data set file"):
        load_dataset(DataConfig(source="cifar10"))
    assert not marker.exists()


def test_an_mnist_file_holding_pickled_objects_is_refused(keras_home: Path) -> None:
    (keras_home / "datasets").mkdir(parents=True)
    objects = np.array([{"x": 1}], dtype=object)
    np.savez(keras_home / "datasets" / "mnist.npz", x_train=objects, y_train=objects,
             x_test=objects, y_test=objects)
    with pytest.raises(DataError, match="not MNIST's npz"):
        load_dataset(DataConfig(source="mnist"))


def test_the_cache_root_follows_keras_home(keras_home: Path) -> None:
    assert keras_datasets.cache_dir() == keras_home
