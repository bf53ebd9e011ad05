"""The FastAPI server a careful user would write, for bench/serve_load.py (and a constant-answer
variant for bench/serve_ceiling.py). Run with uvicorn's app factory, one worker per core:

    MAAS_BENCH_MODEL=/path/model.keras .venv/bin/python -m uvicorn tuned_fastapi:create_app --factory \
        --app-dir bench/peers --workers 2 --host 127.0.0.1 --port 8100 --loop uvloop --http httptools \
        --no-access-log --log-level warning

uvicorn spawns its workers, so each worker calls the factory itself: it loads the model, wraps it in
one ``tf.function`` with an input signature and traces it before taking requests, with one TF
intra-op and one inter-op thread (two workers already fill the two cores). Bodies are parsed and
answers written with orjson; the model is called on the event loop (no thread hop).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

ROUTE = "/v1/models/digits_mlp:predict"


def traced_model(path: str) -> tuple[Any, tuple[int, ...]]:
    """The Keras file at ``path`` as one traced graph (any batch size) and its row shape."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import tf_keras

    model = tf_keras.models.load_model(path, compile=False)
    row_shape = tuple(model.input_shape[1:])
    spec = tf.TensorSpec([None, *row_shape], tf.float32)

    def call(batch: Any) -> Any:
        return model(batch, training=False)

    graph = tf.function(call, input_signature=[spec], autograph=False)
    graph(np.zeros((1, *row_shape), dtype=np.float32))  # trace now, not on the first request
    return graph, row_shape


def create_app() -> FastAPI:
    graph, _ = traced_model(os.environ["MAAS_BENCH_MODEL"])
    app = FastAPI()

    @app.post(ROUTE)
    async def predict(request: Request) -> Response:
        rows = np.asarray(orjson.loads(await request.body())["instances"], dtype=np.float32)
        out = graph(rows).numpy()
        return Response(orjson.dumps({"predictions": out}, option=orjson.OPT_SERIALIZE_NUMPY),
                        media_type="application/json")

    return app


def canned_answers(outputs: int = 10) -> tuple[bytes, bytes]:
    """A 1-row and a 64-row TF Serving answer of the model's size, made once."""
    row = [round(1 / outputs, 6)] * outputs
    return (orjson.dumps({"predictions": [row]}), orjson.dumps({"predictions": [row] * 64}))


# A 1-row digits request is ~400 bytes of JSON, a 64-row one ~25 KB: the length tells them apart
# without parsing, so the constant servers send answers as large as the real ones.
MANY_ROWS_BYTES = 4096


def create_constant_app() -> FastAPI:
    """Reads the body, parses nothing, calls no model: a canned answer of the right size."""
    one, many = canned_answers()
    app = FastAPI()

    @app.post(ROUTE)
    async def predict(request: Request) -> Response:
        body = await request.body()
        return Response(many if len(body) > MANY_ROWS_BYTES else one, media_type="application/json")

    return app
