"""A Keras model as one traced TensorFlow graph, called straight from numpy.

``tf.function`` with an input signature traces the model once for any batch size; each call then
still binds its Python arguments against the signature, converts them, and looks the concrete
function up before TensorFlow runs anything. On this project's MLP that binding is most of a
call: ~380 us for one row and ~480 us for 64, of which the graph itself takes ~95 and ~215 us.

``GraphCall`` traces the same function once, then calls the traced graph as TensorFlow's own
``Context.call_function`` does (``execute.execute`` with the function's name, its inputs and the
variables it captured, and the context's call attributes), without the binding around it. The
outputs are identical: it is the same graph on the same kernels (``tests/unit/test_graph_call.py``).

It relies on TensorFlow internals (an ``AtomicFunction``'s name and output count, the concrete
function's captured inputs) that are stable across 2.1x but not promised: when any of them is
missing, or the graph has other than one output, ``GraphCall`` calls the ``tf.function`` instead
and says which path it took (``direct``)."""

from __future__ import annotations

import itertools
import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


class GraphCall:
    """``call(batch) -> np.ndarray``: ``model(batch, training=False)`` as one traced graph;
    ``input_shape`` is a row's shape (the batch dimension is left free), ``string_input`` a text
    model's input (one string per row)."""

    def __init__(self, model: Any, input_shape: tuple[int, ...] | list[int], string_input: bool = False):
        from maas.tfkeras import tensorflow

        tf = self._tf = tensorflow()
        spec = tf.TensorSpec([None, *input_shape], tf.string if string_input else tf.float32)

        def call(batch: Any) -> Any:
            return model(batch, training=False)

        self.function = tf.function(call, input_signature=[spec], autograph=False)
        self._row_shape, self._dtype = tuple(input_shape), spec.dtype
        self._direct = self._direct_call()
        self.direct = self._direct is not None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self._direct is None or batch.shape[1:] != self._row_shape:
            # the tf.function checks the batch against its signature and says what is wrong
            return self.function(batch).numpy()
        return self._direct(batch)

    def _direct_call(self) -> Any:
        """The traced graph's own call, or None where this TensorFlow's internals differ."""
        try:
            from tensorflow.python.eager import context, execute

            concrete = self.function.get_concrete_function()
            atomic = concrete._inference_function
            outputs = len(atomic.function_type.flat_outputs)
            name = atomic.name.decode() if isinstance(atomic.name, bytes) else str(atomic.name)
            captures = list(concrete.captured_inputs)
            ctx = context.context()
            attrs = tuple(itertools.chain(*ctx.function_call_options.as_attrs().items()))
        except (AttributeError, ImportError, TypeError) as exc:
            logger.info("TensorFlow's traced graph is called through tf.function: %s", exc)
            return None
        if outputs != 1:
            return None
        constant, dtype = self._tf.constant, self._dtype

        def direct(batch: np.ndarray) -> np.ndarray:
            (result,) = execute.execute(name, num_outputs=1, inputs=[constant(batch, dtype), *captures],
                                        attrs=attrs, ctx=ctx)
            return result.numpy()

        return direct
