"""The one place that imports Keras.

Keras 3 cannot train under MultiWorkerMirroredStrategy (ray-project/ray#47464), so the platform
uses tf_keras (Keras 2) in every process. Importing it lazily keeps TensorFlow out of import time.
"""

from __future__ import annotations

import os
from types import ModuleType


def keras() -> ModuleType:
    # Bind tf.keras to tf_keras too, in case TensorFlow is imported after this point by a library.
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tf_keras

    return tf_keras


def tensorflow() -> ModuleType:
    keras()
    import tensorflow as tf

    return tf


def save_model(model: object, path: str) -> None:
    # Name the format: tf_keras decides ".keras means v3" from a thread-local that is only set in
    # the importing thread, and Ray runs training loops in another thread (it would write HDF5).
    model.save(path, save_format="keras_v3")  # type: ignore[attr-defined]


def load_model(path: str, compile: bool = True) -> object:
    """Load a Keras v3 file with safe mode on: no arbitrary code (lambdas) is deserialised. Our
    own preprocessing layers (``maas.preprocessing``) are registered first."""
    from maas.preprocessing import register

    register()
    return keras().models.load_model(path, safe_mode=True, compile=compile)
