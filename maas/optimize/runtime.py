"""Run an ONNX artefact with ONNX Runtime, without TensorFlow: what serving calls for a version
whose ``metadata["artifact"]["runtime"]`` is ``onnxruntime``.

Only the CPU execution provider and no custom-op library is ever registered, so a model file can
name nothing but the standard ONNX operators (our converter emits only those; a model that needs
a custom op fails to load instead of loading code).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maas.errors import IntegrityError

PROVIDERS = ["CPUExecutionProvider"]


@dataclass
class OnnxPredictor:
    """One ONNX Runtime session: ``predict(batch) -> probabilities``, like a Keras model call."""

    session: Any  # onnxruntime.InferenceSession
    input_name: str
    output_name: str

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: np.asarray(batch, np.float32)})[0]


def session_options(threads: int) -> Any:
    """``threads`` intra-op threads (a replica's CPUs), one inter-op thread, sequential execution:
    a small model's graph has no parallel branches worth a second pool."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def load_onnx_session(source: str | Path | bytes, threads: int = 1,
                      what: str = "ONNX model") -> OnnxPredictor:
    """An ``OnnxPredictor`` over ``source``: a path to a ``.onnx`` file, or its bytes (serving
    passes the verified, decrypted bytes, so nothing is read twice and nothing touches disk)."""
    import onnxruntime as ort

    content = source if isinstance(source, bytes) else Path(source).read_bytes()
    try:
        session = ort.InferenceSession(content, sess_options=session_options(threads), providers=PROVIDERS)
    except Exception as exc:  # onnxruntime raises its own untyped errors for a bad file
        raise IntegrityError(f"{what}: ONNX Runtime cannot load it ({exc})") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise IntegrityError(f"{what}: expected one input and one output, found "
                             f"{[i.name for i in inputs]} -> {[o.name for o in outputs]}")
    return OnnxPredictor(session, inputs[0].name, outputs[0].name)
