"""Pure model builders: ``build_model(config, schema, stats)`` -> compiled-ready Keras model.

Input normalisation is a layer inside the model, so a served model takes raw feature values and
training and serving cannot drift apart.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from maas.config import ModelConfig, OptimizerConfig
from maas.data import DataSchema
from maas.tfkeras import keras


class ModelConfigError(ValueError):
    """The model config does not fit the data (e.g. a CNN on tabular rows)."""


def check_compatible(cfg: ModelConfig, schema: DataSchema) -> None:
    """Fail on the driver, before any worker starts, when model and data do not fit."""
    if cfg.type == "cnn":
        if not schema.is_image:
            raise ModelConfigError(
                f"model.type=cnn needs image-shaped input (H, W) or (H, W, C); "
                f"data '{schema.source}' has rows of shape {schema.input_shape}. Use model.type=mlp."
            )
        smallest = min(schema.input_shape[:2])
        pools = len(cfg.conv_filters)
        if smallest // (2 ** max(pools - 1, 0)) < 1 or not cfg.conv_filters:
            raise ModelConfigError(
                f"model.conv_filters has {pools} conv blocks; input {schema.input_shape} is too small "
                f"for that many poolings (at most {int(np.log2(smallest)) + 1})"
            )


def build_model(cfg: ModelConfig, schema: DataSchema, mean: np.ndarray, variance: np.ndarray):
    check_compatible(cfg, schema)
    k = keras()
    inputs = k.Input(shape=schema.input_shape, name="inputs", dtype="float32")
    axes = tuple(range(1, len(schema.input_shape) + 1))
    x = k.layers.Normalization(axis=axes, mean=mean, variance=variance, name="normalize")(inputs)
    if cfg.type == "cnn":
        x = _conv_stack(k, x, cfg, schema)
    x = k.layers.Flatten(name="flatten")(x)
    for i, units in enumerate(cfg.hidden_units):
        x = k.layers.Dense(units, activation=cfg.activation, name=f"dense_{i}")(x)
        if cfg.dropout:
            x = k.layers.Dropout(cfg.dropout, name=f"dropout_{i}")(x)
    outputs = k.layers.Dense(schema.num_classes, activation="softmax", name="probabilities")(x)
    return k.Model(inputs, outputs, name=f"{cfg.type}_classifier")


def _conv_stack(k: Any, x: Any, cfg: ModelConfig, schema: DataSchema) -> Any:
    if len(schema.input_shape) == 2:
        x = k.layers.Reshape((*schema.input_shape, 1), name="add_channel")(x)
    for i, filters in enumerate(cfg.conv_filters):
        x = k.layers.Conv2D(filters, cfg.kernel_size, padding="same", activation=cfg.activation,
                            name=f"conv_{i}")(x)
        if i < len(cfg.conv_filters) - 1:
            x = k.layers.MaxPooling2D(2, padding="same", name=f"pool_{i}")(x)
    return x


def build_optimizer(cfg: OptimizerConfig):
    k = keras()
    classes = {
        "adam": k.optimizers.Adam,
        "adamw": k.optimizers.AdamW,
        "sgd": k.optimizers.SGD,
        "rmsprop": k.optimizers.RMSprop,
    }
    return classes[cfg.name](learning_rate=cfg.learning_rate)


def compile_model(model, optimizer_cfg: OptimizerConfig) -> None:
    model.compile(
        optimizer=build_optimizer(optimizer_cfg),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
