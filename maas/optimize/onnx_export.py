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
    return compact_names(proto.SerializeToString())


def compact_names(content: bytes) -> bytes:
    """The same ONNX model with its internal tensors renamed ``t0``, ``t1``, ..., its nodes ``n0``,
    ``n1``, ... and its doc strings dropped; the graph's input and output names stay (serving and
    clients use them). tf2onnx names every tensor after its TensorFlow op path
    (``mlp_classifier/dense_0/MatMul/ReadVariableOp:0``) and the quantiser adds ``_quantized``,
    ``_scale`` and ``_zero_point`` copies of those: on the digits MLP the names were ~23% of the
    int8 file. A graph with subgraphs (If, Loop, Scan: they may refer to outer names), functions
    or sparse initializers (named inside their values, which this does not rename) is left as it is."""
    import onnx

    model = onnx.load_from_string(content)
    graph = model.graph
    subgraphs = any(attr.g.node or attr.graphs for node in graph.node for attr in node.attribute)
    if model.functions or graph.sparse_initializer or subgraphs:
        return content
    keep = {value.name for value in (*graph.input, *graph.output)}
    renamed: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in renamed:
            candidate = f"t{len(renamed)}"
            while candidate in keep:
                candidate += "_"
            renamed[name] = candidate
        return renamed[name]

    for tensor in graph.initializer:
        tensor.name = short(tensor.name)
        tensor.doc_string = ""
    for index, node in enumerate(graph.node):  # short, still unique: tools may name new nodes after them
        node.name, node.doc_string = f"n{index}", ""
        node.input[:] = [short(name) for name in node.input]
        node.output[:] = [short(name) for name in node.output]
    for value in graph.value_info:
        value.name = short(value.name)
    graph.doc_string = ""
    return model.SerializeToString()


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
