"""Keras -> SavedModel in the TensorFlow Serving layout.

``model.export(dir)`` writes ``saved_model.pb`` and ``variables/`` whose ``serving_default``
signature has method ``tensorflow/serving/predict`` and takes the Input layer's name (``inputs``,
from ``build_model``) as its input key, so ``tensorflow_model_server --model_base_path=<root>/<name>``
finds the version directory as it is. ``model.keras`` stays beside it for our own serving.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SIGNATURE = "serving_default"
METHOD = "tensorflow/serving/predict"


@dataclass
class SavedModelPredictor:
    """The exported ``serving_default`` signature, called like TensorFlow Serving would."""

    signature: Any
    input_name: str
    output_name: str
    keep: Any = None  # the loaded object: the signature's variables live as long as it does

    def predict(self, batch: np.ndarray) -> np.ndarray:
        from maas.tfkeras import tensorflow

        tensor = tensorflow().constant(batch)
        return self.signature(**{self.input_name: tensor})[self.output_name].numpy()


def export_savedmodel(model: Any, directory: str | Path) -> None:
    """Write the SavedModel files straight into ``directory`` (the version's top level). tf_keras
    prints every endpoint's captured tensors while it writes: kept out of the job's log."""
    with contextlib.redirect_stdout(io.StringIO()):
        model.export(str(directory))


def load_savedmodel(directory: str | Path) -> SavedModelPredictor:
    """Load the signature the way a serving process would: no Keras, no Python model code."""
    from maas.tfkeras import tensorflow

    loaded = tensorflow().saved_model.load(str(directory))
    signature = loaded.signatures[SIGNATURE]
    (input_name,) = signature.structured_input_signature[1].keys()
    (output_name,) = signature.structured_outputs.keys()
    return SavedModelPredictor(signature, input_name, output_name, keep=loaded)
