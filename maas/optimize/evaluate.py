"""Measure any predictor the same way: accuracy on the parent's test split, top-1 agreement with
the parent, file size, and single-call latency at the recipe's batch sizes."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from maas.data import DataSchema, Splits
from maas.optimize.recipe import EvaluationSection


class Predictor(Protocol):
    def predict(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass
class KerasPredictor:
    """The parent as serving runs it: one traced graph for any batch size (``maas.graph_call``)."""

    model: Any
    schema: DataSchema

    def __post_init__(self) -> None:
        from maas.graph_call import GraphCall

        self._call = GraphCall(self.model, self.schema.input_shape, self.schema.string_input)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self._call(batch)


def limit_tensorflow_threads(threads: int) -> bool:
    """Give TensorFlow the same intra-op threads as the ONNX Runtime sessions, so latencies
    compare like with like. Only possible before TensorFlow's runtime starts (False after)."""
    from maas.tfkeras import tensorflow

    tf = tensorflow()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised in this process (tests, notebooks)
        return False
    return True


def predict_all(predictor: Predictor, x: np.ndarray, batch: int = 1024) -> np.ndarray:
    return np.concatenate([predictor.predict(x[i:i + batch]) for i in range(0, len(x), batch)])


def call_latency_ms(predictor: Predictor, rows: np.ndarray, batch: int, repeats: int, warmup: int) -> float:
    """Median wall time of one ``predict`` call on ``batch`` rows (test rows, repeated if too few)."""
    x = np.resize(rows, (batch, *rows.shape[1:])) if len(rows) < batch else rows[:batch]
    for _ in range(warmup):
        predictor.predict(x)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        predictor.predict(x)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def measure(predictor: Predictor, splits: Splits, parent_labels: np.ndarray | None, size_bytes: int,
            cfg: EvaluationSection) -> dict[str, float]:
    """The trade-off figures of one variant (or of the parent, with ``parent_labels=None``)."""
    x_test = splits.x_test if splits.schema.string_input else np.asarray(splits.x_test, np.float32)
    predicted = predict_all(predictor, x_test).argmax(axis=1)
    figures = {
        "test_accuracy": float(np.mean(predicted == splits.y_test)),
        "top1_agreement": float(np.mean(predicted == parent_labels)) if parent_labels is not None else 1.0,
        "size_bytes": int(size_bytes),
    }
    for batch in cfg.batch_sizes:
        figures[f"latency_ms_batch{batch}"] = call_latency_ms(predictor, x_test, batch, cfg.repeats,
                                                              cfg.warmup)
    return figures


def top1(predictor: Predictor, x: np.ndarray) -> np.ndarray:
    return predict_all(predictor, x).argmax(axis=1)
