import threading

import numpy as np
import pytest

from maas.config import ModelConfig, OptimizerConfig
from maas.data import DataSchema
from maas.errors import ModelError
from maas.models import build_model, check_compatible, compile_model

IMAGE = DataSchema(input_shape=(8, 8), classes=list(range(10)), source="test-images")
TABULAR = DataSchema(input_shape=(5,), classes=["a", "b"], source="test-table")


def _stats(schema: DataSchema) -> tuple[np.ndarray, np.ndarray]:
    return np.full(schema.input_shape, 2.0), np.full(schema.input_shape, 4.0)


@pytest.mark.parametrize("model_cfg, schema", [
    (ModelConfig(type="mlp", hidden_units=[16, 8], dropout=0.2, activation="tanh"), TABULAR),
    (ModelConfig(type="mlp", hidden_units=[16]), IMAGE),
    (ModelConfig(type="cnn", conv_filters=[4, 8], hidden_units=[8]), IMAGE),
])
def test_builders_give_probabilities_per_class(model_cfg: ModelConfig, schema: DataSchema) -> None:
    model = build_model(model_cfg, schema, *_stats(schema))
    out = np.asarray(model(np.random.rand(3, *schema.input_shape).astype("float32"), training=False))
    assert out.shape == (3, schema.num_classes)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_layer_sizes_and_dropout_follow_config() -> None:
    model = build_model(ModelConfig(hidden_units=[7, 5], dropout=0.3), TABULAR, *_stats(TABULAR))
    dense = [layer.units for layer in model.layers if layer.name.startswith("dense_")]
    dropout = [layer.rate for layer in model.layers if layer.name.startswith("dropout_")]
    assert dense == [7, 5]
    assert dropout == [0.3, 0.3]


def test_normalisation_lives_inside_the_model() -> None:
    model = build_model(ModelConfig(), TABULAR, *_stats(TABULAR))
    normalize = model.get_layer("normalize")
    raw = np.full((1, 5), 4.0, dtype="float32")
    np.testing.assert_allclose(np.asarray(normalize(raw)), 1.0, rtol=1e-5)  # (4 - 2) / sqrt(4)


def test_cnn_on_tabular_data_is_refused_with_advice() -> None:
    with pytest.raises(ModelError, match=r"needs image-shaped input.*Use model.type=mlp"):
        check_compatible(ModelConfig(type="cnn"), TABULAR)


def test_too_many_poolings_for_input_is_refused() -> None:
    with pytest.raises(ModelError, match="too small"):
        check_compatible(ModelConfig(type="cnn", conv_filters=[4] * 6), IMAGE)


def test_saved_model_reloads_in_safe_mode_from_another_thread(tmp_path) -> None:
    """Ray runs training loops and replicas off the main thread: the format must not change."""
    from maas.tfkeras import load_model, save_model

    model = build_model(ModelConfig(hidden_units=[4]), TABULAR, *_stats(TABULAR))
    compile_model(model, OptimizerConfig())
    path = str(tmp_path / "model.keras")
    thread = threading.Thread(target=save_model, args=(model, path))
    thread.start()
    thread.join()
    with open(path, "rb") as f:
        assert f.read(2) == b"PK"  # Keras v3 zip, not legacy HDF5
    x = np.random.rand(2, 5).astype("float32")
    np.testing.assert_allclose(np.asarray(load_model(path)(x)), np.asarray(model(x)), rtol=1e-6)


TEXT = DataSchema(input_shape=(), classes=["neg", "pos"], dtype="string", source="test-text")
TEXTS = np.array(["the film was good", "the film was not good", "awful service", "great food"] * 5)


@pytest.mark.parametrize("encoder", ["conv", "lstm"])
def test_text_models_take_raw_strings(encoder: str) -> None:
    cfg = ModelConfig(type="text", text_encoder=encoder, vocab_size=50, sequence_length=8,
                      embedding_dim=4, conv_filters=[4], lstm_units=[4], hidden_units=[4])
    model = build_model(cfg, TEXT, None, None, TEXTS)
    assert model.get_layer("tokenize").vocabulary_size() <= 50
    out = np.asarray(model(np.array(["good film", "unknown words here"]), training=False))
    assert out.shape == (2, 2)


def test_text_model_on_numbers_and_numbers_model_on_text_are_refused() -> None:
    with pytest.raises(ModelError, match="use model.type=text"):
        check_compatible(ModelConfig(type="mlp"), TEXT)
    with pytest.raises(ModelError, match="use model.type=mlp or cnn"):
        check_compatible(ModelConfig(type="text"), TABULAR)


def test_linear_learning_rate_scaling() -> None:
    from maas.models import effective_learning_rate

    assert effective_learning_rate(OptimizerConfig(learning_rate=0.01), 4) == 0.01
    scaled = OptimizerConfig(learning_rate=0.01, scale_lr_with_workers=True)
    assert effective_learning_rate(scaled, 4) == pytest.approx(0.04)
