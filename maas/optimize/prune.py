"""Magnitude pruning with fine-tuning: the ``pruned`` variant.

The parent's Dense and convolution kernels are pruned to ``target_sparsity`` by
tensorflow-model-optimization (tfmot) while the model is fine-tuned on the parent's training split
(its own optimizer settings, a tenth of its learning rate by default), then the pruning wrappers
are stripped: what is published is a plain Keras model of the parent's architecture whose pruned
kernels hold exact zeros, so it loads, serves and exports (ONNX, int8, SavedModel) like any Keras
version. A dense file does not shrink with zeros; ``compressed_size_bytes`` (gzip) shows what
pruning buys on the wire and at rest.

tfmot 0.8 pins ``absl-py~=1.2`` against TensorFlow 2.21's newer absl-py, so it is installed without
its dependencies (``make setup`` does; ``pip install --no-deps -c constraints.txt
tensorflow-model-optimization``); it runs with ours (checked: import, wrap, fit, strip).
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from maas.errors import ConfigError, ModelError

PRUNABLE = ("Dense", "Conv1D", "Conv2D")
INSTALL = "pip install --no-deps -c constraints.txt tensorflow-model-optimization"


@dataclass
class Pruned:
    model: Any            # tf_keras.Model, wrappers stripped
    sparsity: float       # share of zeros over the pruned kernels
    pruned_layers: list[str]


def tfmot() -> Any:
    try:
        import tensorflow_model_optimization as module
    except ImportError:
        raise ConfigError("the 'pruned' variant needs tensorflow-model-optimization, which is not "
                          f"installed here: `{INSTALL}` (make setup installs it)") from None
    return module


@dataclass(frozen=True)
class PruneJob:
    """One pruning fine-tune: what every Ray Train rank, the driver, or this process alone needs
    to rebuild and fine-tune the wrapped parent. ``workers`` 0: in this process, without Ray."""

    keras_bytes: bytes
    filename: str
    what: str
    target_sparsity: float
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    workers: int
    cpus_per_worker: float
    max_failures: int

    def steps_per_epoch(self, rows: int) -> int:
        """One process: Keras' array feed, the last batch partial. Several workers: the same
        number of full batches on every rank (collectives need it), as training does."""
        if self.workers <= 1:
            return math.ceil(rows / self.batch_size)
        from maas.training import steps_per_epoch

        return max(1, steps_per_epoch(rows, self.workers, self.batch_size))

    def wrapped_parent(self, rows: int) -> tuple[Any, list[str]]:
        """A fresh copy of the parent, wrapped for pruning over this job's steps on ``rows``
        training rows: the same model on every rank and on the driver."""
        from maas.artifacts.keras_loader import load_keras_bytes

        parent = load_keras_bytes(self.keras_bytes, self.filename, self.what)
        return wrap_for_pruning(parent, self.what, self.target_sparsity,
                                self.epochs * self.steps_per_epoch(rows))


def prune_and_finetune(job: PruneJob, x_train: np.ndarray, y_train: np.ndarray) -> Pruned:
    """In this process, without Ray (``workers: 0``): a fresh copy of the parent (the caller's
    model stays untouched), pruned while fine-tuned, stripped. ``maas.optimize.prune_train`` does
    the same as a Ray Train run."""
    from maas.tfkeras import tensorflow

    tensorflow().random.set_seed(job.seed)
    wrapped, names = job.wrapped_parent(len(x_train))
    compile_for_finetuning(wrapped, job.learning_rate)
    wrapped.fit(x_train, y_train, batch_size=job.batch_size, epochs=job.epochs, shuffle=True, verbose=0,
                callbacks=[tfmot().sparsity.keras.UpdatePruningStep()])
    return strip(wrapped, names)


def wrap_for_pruning(model: Any, what: str, target_sparsity: float,
                     total_steps: int) -> tuple[Any, list[str]]:
    """The model with its Dense/convolution layers wrapped by ``prune_low_magnitude`` (sparsity
    from 0 to the target over the first 70% of ``total_steps``), and the wrapped layers' names.
    Deterministic: every Ray Train rank and the driver build the same wrapped model."""
    from maas.tfkeras import keras

    sparsity_api = tfmot().sparsity.keras
    names = [layer.name for layer in model.layers if type(layer).__name__ in PRUNABLE]
    if not names:
        raise ModelError(f"{what} has no Dense or convolution layer to prune ({', '.join(PRUNABLE)})")
    schedule = sparsity_api.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=target_sparsity, begin_step=0,
        end_step=max(1, int(total_steps * 0.7)), frequency=max(1, total_steps // 20))

    def wrap(layer: Any) -> Any:  # the same layer objects: the parent's trained weights carry over
        if layer.name in names:
            return sparsity_api.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    return keras().models.clone_model(model, clone_function=wrap), names


def compile_for_finetuning(wrapped: Any, learning_rate: float) -> None:
    from maas.tfkeras import keras

    wrapped.compile(optimizer=keras().optimizers.Adam(learning_rate=learning_rate),
                    loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def strip(wrapped: Any, names: list[str]) -> Pruned:
    """The plain Keras model inside the wrappers, and the share of zeros in its pruned kernels."""
    stripped = tfmot().sparsity.keras.strip_pruning(wrapped)
    kernels = [layer.get_weights()[0] for layer in stripped.layers if layer.name in names]
    zeros = sum(int((w == 0).sum()) for w in kernels)
    return Pruned(stripped, zeros / max(1, sum(w.size for w in kernels)), names)


def keras_bytes_of(model: Any) -> bytes:
    import tempfile
    from pathlib import Path

    from maas.tfkeras import save_model  # the project's one way of writing a .keras file

    with tempfile.TemporaryDirectory(prefix="maas-pruned-") as work:
        path = Path(work, "model.keras")
        save_model(model, str(path))
        return path.read_bytes()


def compressed_size(content: bytes) -> int:
    return len(gzip.compress(content, compresslevel=9))
