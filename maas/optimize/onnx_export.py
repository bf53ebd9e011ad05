"""Keras -> ONNX with tf2onnx, checked against Keras on the validation split before it may be
published (docs/optimize.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from maas.data import DataSchema
from maas.errors import ModelError

INPUT_NAME = "inputs"  # the name build_model gives the Input layer; serving's V2 tensor name too
TEXT_REFUSAL = (
    "{what} tokenises text inside the model (TextVectorization): its string operations have no "
    "useful {target} equivalent ({why}), so no {target} variant is made. What works instead: the "
    "'savedmodel' variant, which keeps the tokeniser, or serving the Keras version as it is")
TABLE_REFUSAL = (
    "{what} takes a table as one string matrix and parses it inside the model (numbers from text, "
    "categories looked up in vocabularies; maas/preprocessing.py): {target} has no useful "
    "equivalent of those string operations, so no {target} variant is made. What works instead: "
    "the 'savedmodel' and 'pruned' variants, or serving the Keras version as it is")
WHY = {"ONNX": "tf2onnx needs onnxruntime-extensions and its outputs still differ",
       "TFLite": "its string ops are no TFLite built-ins; they would need TensorFlow select ops (the "
                 "Flex delegate), which standard edge runtimes do not include"}


@dataclass(frozen=True)
class OnnxExport:
    content: bytes
    max_abs_diff: float  # against the Keras model on the validation split
    opset: int


def refuse_text_models(model: Any, schema: DataSchema, what: str, target: str = "ONNX") -> None:
    """ONNX (or TFLite) cannot usefully represent in-model tokenisation: say why and what to use
    instead."""
    if schema.is_table:
        raise ModelError(TABLE_REFUSAL.format(what=what, target=target))
    tokenises = any(type(layer).__name__ == "TextVectorization" for layer in model.layers)
    if schema.is_text or tokenises:
        raise ModelError(TEXT_REFUSAL.format(what=what, target=target, why=WHY[target]))


def keras_predict(model: Any, x: np.ndarray, batch: int = 1024) -> np.ndarray:
    """The Keras model's outputs on ``x``, in batches (never ``model.predict``: ~60 ms a call)."""
    parts = [np.asarray(model(x[i:i + batch], training=False)) for i in range(0, len(x), batch)]
    return np.concatenate(parts) if parts else np.zeros((0,))


def convert(model: Any, schema: DataSchema, opset: int) -> bytes:
    """The ONNX bytes of ``model``: one float32 input named ``inputs`` of shape (batch, *input_shape)."""
    from maas.tfkeras import tensorflow

    tf = tensorflow()  # first: tf2onnx imports TensorFlow, which must see TF_USE_LEGACY_KERAS=1
    import tf2onnx

    spec = tf.TensorSpec((None, *schema.input_shape), tf.float32, name=INPUT_NAME)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=(spec,), opset=opset)
    return proto.SerializeToString()


def max_abs_diff(expected: np.ndarray, actual: np.ndarray) -> float:
    return float(np.max(np.abs(expected - actual))) if expected.size else 0.0


def export_onnx(model: Any, schema: DataSchema, x_val: np.ndarray, opset: int, tolerance: float,
                what: str) -> OnnxExport:
    """Convert, run the ONNX model with ONNX Runtime on the validation rows and refuse it
    (``ModelError``) when its outputs differ from Keras's by more than ``tolerance``."""
    from maas.optimize.runtime import load_onnx_session

    refuse_text_models(model, schema, what)
    content = convert(model, schema, opset)
    x_val = np.asarray(x_val, np.float32)
    diff = max_abs_diff(keras_predict(model, x_val), load_onnx_session(content, what=what).predict(x_val))
    check_tolerance(diff, tolerance, what)
    return OnnxExport(content, diff, opset)


def check_tolerance(diff: float, tolerance: float, what: str) -> None:
    if not diff <= tolerance:  # NaN fails too
        raise ModelError(f"{what}: the converted model's outputs differ from Keras's by up to "
                         f"{diff:.3g} on the validation split, above the tolerance {tolerance:g}; "
                         "it is not registered (raise the variant's tolerance only if that is acceptable)")
