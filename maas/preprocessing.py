"""The three Keras layers that put missing-value filling and a table's parsing inside the model,
so a served model (and its SavedModel) takes raw values and training and serving cannot drift.

What a model takes, by its schema (``maas/data.py``):

* numbers only (``dtype: float32``): one float32 tensor ``inputs`` ``[n, *input_shape]``, as
  before. Trained with ``data.missing: impute_mean | impute_median``, its first layer is
  ``FillMissing``: a NaN becomes the training split's mean or median of that feature.
* a table with categorical columns (``dtype: table``): one **string** tensor ``inputs``
  ``[n, columns]``, one cell per feature column in file order; a number travels as its decimal
  text (``"41.5"``; ``""`` or ``"nan"`` when missing), a category as its text (``""`` when
  missing). Inside: ``TakeColumns`` + ``ParseNumbers`` (+ ``FillMissing``) + ``Normalization``
  for the numeric columns; per categorical column ``TakeColumns`` + ``StringLookup`` (vocabulary
  from the training split, one out-of-vocabulary index for any category it never saw) as a
  one-hot vector or an integer id into an ``Embedding``; ``Concatenate``; the MLP.

Why one string tensor and not one input per column: every path a model goes through (training's
array feed and tf.data shards, evaluation, the SavedModel check at publish, batching in serving,
batch scoring, the v1/v2 protocols) passes one array per batch, and a one-input model keeps them
all as they are; TensorFlow Serving clients send ``{"instances": [["41.5", "pro", ""]]}``. Our own
serving takes natural JSON rows (``[41.5, "pro", null]``, or ``{"age": 41.5, "plan": "pro"}``) and
writes the cells as text (``maas/serving/inputs.py``). No built-in Keras layer turns text into a
number or replaces a NaN, hence these layers: each does one TensorFlow op, holds only numbers
in its config, and is on the loader's allow-list by exact name (``maas/artifacts/keras_safety.py``);
the SavedModel needs none of this Python (its graph holds the ops). Loading a ``.keras`` file that
uses them needs ``register()`` first (``maas.tfkeras.load_model`` calls it).
"""

from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace
from typing import Any

PACKAGE = "maas"
LAYER_NAMES = ("TakeColumns", "ParseNumbers", "FillMissing")
MODULE = __name__


@lru_cache(maxsize=1)
def layers() -> SimpleNamespace:
    """The layer classes, defined (and registered under ``maas>``) on first use: importing this
    module imports no TensorFlow."""
    from maas.tfkeras import keras, tensorflow

    k, tf = keras(), tensorflow()
    register = k.saving.register_keras_serializable(package=PACKAGE)

    @register
    class TakeColumns(k.layers.Layer):
        """``[n, d]`` -> ``[n, len(columns)]``: the listed columns, in that order."""

        def __init__(self, columns: list[int], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.columns = [int(c) for c in columns]

        def call(self, inputs: Any) -> Any:
            return tf.gather(inputs, self.columns, axis=1)

        def compute_output_shape(self, input_shape: Any) -> Any:
            return tf.TensorShape([input_shape[0], len(self.columns)])

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "columns": self.columns}

    @register
    class ParseNumbers(k.layers.Layer):
        """Decimal text -> float32; the empty string is a missing value (NaN). Text that is no
        number fails the call: serving checks every cell before the model sees it."""

        def call(self, inputs: Any) -> Any:
            text = tf.where(tf.equal(inputs, ""), tf.constant("nan"), inputs)
            return tf.strings.to_number(text, out_type=tf.float32)

    @register
    class FillMissing(k.layers.Layer):
        """NaN -> the fill value of its feature (``values``: one per feature, shaped like a row)."""

        def __init__(self, values: list[Any], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.values = values

        def call(self, inputs: Any) -> Any:
            fill = tf.cast(tf.constant(self.values, dtype=tf.float32), inputs.dtype)
            return tf.where(tf.math.is_nan(inputs), fill + tf.zeros_like(inputs), inputs)

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "values": self.values}

    return SimpleNamespace(TakeColumns=TakeColumns, ParseNumbers=ParseNumbers, FillMissing=FillMissing)


def register() -> None:
    """Make the layers known to Keras' deserialisation (idempotent)."""
    layers()
