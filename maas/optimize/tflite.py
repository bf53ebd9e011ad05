"""Keras -> TensorFlow Lite for edge clients: registered and downloadable, not served.

fp16:    float16 weights (half the size), float32 compute on most CPUs
dynamic: int8 weights, float activations ("dynamic range" quantisation)
int8:    int8 weights and activations, calibrated on training rows; float32 input and output

Checked here with TensorFlow's own ``tf.lite.Interpreter`` (deprecated upstream in favour of
``ai-edge-litert``, which edge clients should use; it is not a dependency of ours).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def convert_tflite(model: Any, mode: str, calibration: np.ndarray | None = None) -> bytes:
    from maas.tfkeras import tensorflow

    tf = tensorflow()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "int8":
        if calibration is None or not len(calibration):
            raise ValueError("int8 TFLite conversion needs calibration rows")
        rows = np.asarray(calibration, np.float32)
        converter.representative_dataset = lambda: ([rows[i:i + 1]] for i in range(len(rows)))
    elif mode != "dynamic":
        raise ValueError(f"unknown TFLite mode {mode!r}")
    return converter.convert()


@dataclass
class TfLitePredictor:
    """One interpreter; its input is resized when the batch size changes (TFLite shapes are fixed
    per allocation). Not thread-safe: one per thread."""

    interpreter: Any
    _batch: int | None = field(default=None, init=False)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, np.float32)
        (inp,), (out,) = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if self._batch != len(batch):
            self.interpreter.resize_tensor_input(inp["index"], list(batch.shape))
            self.interpreter.allocate_tensors()
            self._batch = len(batch)
        self.interpreter.set_tensor(inp["index"], batch)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(out["index"]).copy()


def load_tflite(content: bytes, threads: int = 1) -> TfLitePredictor:
    from maas.tfkeras import tensorflow

    with warnings.catch_warnings():  # the deprecation notice, once per interpreter
        warnings.simplefilter("ignore")
        interpreter = tensorflow().lite.Interpreter(model_content=content, num_threads=threads)
    return TfLitePredictor(interpreter)
