"""Pure model builders: ``build_model(config, schema, stats)`` -> compiled-ready Keras model.

Input normalisation is a layer inside the model, so a served model takes raw feature values and
training and serving cannot drift apart. So are missing-value filling and a table's categorical
lookups (``maas/preprocessing.py``), from the fitted values in ``schema.preprocessing``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from maas import preprocessing
from maas.config import ModelConfig, OptimizerConfig
from maas.data import DataSchema
from maas.errors import ModelError
from maas.tfkeras import keras


def check_compatible(cfg: ModelConfig, schema: DataSchema) -> None:
    """Fail on the driver, before any worker starts, when model and data do not fit."""
    if schema.is_table and cfg.type != "mlp":
        raise ModelError(
            f"model.type={cfg.type} does not fit data '{schema.source}': a table with categorical "
            "columns (data.categorical_columns) is one row of values per example; use model.type=mlp")
    if (cfg.type == "text") != schema.is_text:
        wanted = "model.type=text" if schema.is_text else "model.type=mlp or cnn"
        raise ModelError(
            f"model.type={cfg.type} does not fit data '{schema.source}' "
            f"({'text' if schema.is_text else 'numeric'} input): use {wanted}"
        )
    if cfg.type == "cnn":
        if not schema.is_image:
            raise ModelError(
                f"model.type=cnn needs image-shaped input (H, W) or (H, W, C); "
                f"data '{schema.source}' has rows of shape {schema.input_shape}. Use model.type=mlp."
            )
        smallest = min(schema.input_shape[:2])
        pools = len(cfg.conv_filters)
        if smallest // (2 ** max(pools - 1, 0)) < 1 or not cfg.conv_filters:
            raise ModelError(
                f"model.conv_filters has {pools} conv blocks; input {schema.input_shape} is too small "
                f"for that many poolings (at most {int(np.log2(smallest)) + 1})"
            )


def build_model(cfg: ModelConfig, schema: DataSchema, mean: np.ndarray | None,
                variance: np.ndarray | None, texts: np.ndarray | None = None):
    """``mean``/``variance`` feed the Normalization layer of numeric models; ``texts`` (training
    texts) build the vocabulary of a text model's TextVectorization layer."""
    check_compatible(cfg, schema)
    k = keras()
    if cfg.type == "text":
        return _text_model(k, cfg, schema, texts)
    if schema.is_table:
        inputs, x = _table_features(k, schema)
        return k.Model(inputs, _classifier_head(k, x, cfg, schema), name=f"{cfg.type}_classifier")
    inputs = k.Input(shape=schema.input_shape, name="inputs", dtype="float32")
    axes = tuple(range(1, len(schema.input_shape) + 1))
    x = inputs
    fill = (schema.preprocessing or {}).get("fill")
    if fill is not None:  # data.missing=impute_*: NaN -> the training split's mean or median
        x = preprocessing.layers().FillMissing(fill, name="impute", dtype="float32")(x)
    x = k.layers.Normalization(axis=axes, mean=mean, variance=variance, name="normalize")(x)
    if cfg.type == "cnn":
        x = _conv_stack(k, x, cfg, schema)
    x = k.layers.Flatten(name="flatten")(x)
    return k.Model(inputs, _classifier_head(k, x, cfg, schema), name=f"{cfg.type}_classifier")


def _classifier_head(k: Any, x: Any, cfg: ModelConfig, schema: DataSchema) -> Any:
    for i, units in enumerate(cfg.hidden_units):
        x = k.layers.Dense(units, activation=cfg.activation, name=f"dense_{i}")(x)
        if cfg.dropout:
            x = k.layers.Dropout(cfg.dropout, name=f"dropout_{i}")(x)
    # float32 output even under mixed precision: softmax in float16 loses small probabilities
    return k.layers.Dense(schema.num_classes, activation="softmax", dtype="float32",
                          name="probabilities")(x)


def _table_features(k: Any, schema: DataSchema) -> tuple[Any, Any]:
    """One string matrix in (a cell per column), one feature vector out: numeric columns parsed,
    filled and normalised; each categorical column looked up in its training vocabulary (an
    unseen category -> the one out-of-vocabulary index), one-hot or embedded."""
    fitted, names = schema.preprocessing or {}, list(schema.feature_names or [])
    layers = preprocessing.layers()
    inputs = k.Input(shape=(len(names),), dtype="string", name="inputs")
    parts = []
    numeric = [names.index(column) for column in fitted.get("numeric_columns") or []]
    if numeric:
        x = layers.TakeColumns(numeric, name="numeric_columns")(inputs)
        x = layers.ParseNumbers(name="parse_numbers")(x)
        if fitted.get("fill") is not None:
            x = layers.FillMissing(fitted["fill"], name="impute", dtype="float32")(x)
        parts.append(k.layers.Normalization(mean=fitted["mean"], variance=fitted["variance"],
                                            name="normalize")(x))
    vocabularies = fitted.get("categorical") or {}
    for i, column in enumerate(c for c in names if c in vocabularies):
        cell = layers.TakeColumns([names.index(column)], name=f"category_{i}")(inputs)
        if fitted.get("encoding") == "embedding":
            ids = k.layers.StringLookup(vocabulary=vocabularies[column], name=f"lookup_{i}")(cell)
            vectors = k.layers.Embedding(len(vocabularies[column]) + 1, int(fitted["embedding_dim"]),
                                         name=f"embed_{i}")(ids)
            parts.append(k.layers.Flatten(name=f"flatten_{i}")(vectors))
        else:
            parts.append(k.layers.StringLookup(vocabulary=vocabularies[column], output_mode="one_hot",
                                               name=f"one_hot_{i}")(cell))
    x = k.layers.Concatenate(name="features")(parts) if len(parts) > 1 else parts[0]
    return inputs, x


def _text_model(k: Any, cfg: ModelConfig, schema: DataSchema, texts: np.ndarray | None) -> Any:
    """Raw strings in: tokenisation is a layer, so serving sends text, never token ids."""
    if texts is None:
        raise ValueError("a text model needs the training texts to build its vocabulary")
    vectorize = k.layers.TextVectorization(
        max_tokens=cfg.vocab_size, output_sequence_length=cfg.sequence_length, name="tokenize")
    vectorize.adapt(np.asarray(texts, dtype=str))
    inputs = k.Input(shape=(), dtype="string", name="inputs")
    x = vectorize(inputs)
    # LSTMs must skip the padding (else the final state forgets the words); Conv1D takes no mask.
    x = k.layers.Embedding(cfg.vocab_size, cfg.embedding_dim, mask_zero=cfg.text_encoder == "lstm",
                           name="embed")(x)
    if cfg.text_encoder == "lstm":
        for i, units in enumerate(cfg.lstm_units):
            last = i == len(cfg.lstm_units) - 1
            x = k.layers.Bidirectional(k.layers.LSTM(units, return_sequences=not last), name=f"lstm_{i}")(x)
    else:
        for i, filters in enumerate(cfg.conv_filters):
            x = k.layers.Conv1D(filters, cfg.kernel_size, padding="same", activation=cfg.activation,
                                name=f"conv_{i}")(x)
        x = k.layers.GlobalMaxPooling1D(name="pool")(x)
    return k.Model(inputs, _classifier_head(k, x, cfg, schema), name="text_classifier")


def _conv_stack(k: Any, x: Any, cfg: ModelConfig, schema: DataSchema) -> Any:
    if len(schema.input_shape) == 2:
        x = k.layers.Reshape((*schema.input_shape, 1), name="add_channel")(x)
    for i, filters in enumerate(cfg.conv_filters):
        x = k.layers.Conv2D(filters, cfg.kernel_size, padding="same", activation=cfg.activation,
                            name=f"conv_{i}")(x)
        if i < len(cfg.conv_filters) - 1:
            x = k.layers.MaxPooling2D(2, padding="same", name=f"pool_{i}")(x)
    return x


def effective_learning_rate(cfg: OptimizerConfig, num_workers: int) -> float:
    return cfg.learning_rate * (num_workers if cfg.scale_lr_with_workers else 1)


def build_optimizer(cfg: OptimizerConfig, num_workers: int = 1):
    k = keras()
    classes = {
        "adam": k.optimizers.Adam,
        "adamw": k.optimizers.AdamW,
        "sgd": k.optimizers.SGD,
        "rmsprop": k.optimizers.RMSprop,
    }
    return classes[cfg.name](learning_rate=effective_learning_rate(cfg, num_workers))


def compile_model(model, optimizer_cfg: OptimizerConfig, num_workers: int = 1,
                  steps_per_execution: int = 1) -> None:
    model.compile(
        optimizer=build_optimizer(optimizer_cfg, num_workers),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
