"""KServe's model server over the bench model, for bench/serve_load.py. Runs in KServe's own
virtual environment (bench/serve_load.py makes it: kserve pins python-dateutil and protobuf apart
from this project), never in .venv:

    ~/.cache/maas-bench/kserve-venv/bin/python bench/peers/kserve_digits.py --model_path M.keras \
        --http_port 8100 --workers 2 --enable_grpc false --enable_latency_logging false \
        --log_config_file quiet.json

A custom ``kserve.Model`` calling the same traced ``tf.function`` as bench/peers/tuned_fastapi.py
(one TF intra/inter-op thread). With ``--workers 2`` KServe binds the socket in the parent and
pickles the model server into two spawned processes; a ``tf.function`` does not pickle, so the
model is dropped from the pickle and loaded and traced again inside each worker. KServe binds
0.0.0.0 with no option to change it: patched here to 127.0.0.1, as every other bench server binds.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kserve  # noqa: E402  (reads the model-server flags from sys.argv when imported)
import numpy as np  # noqa: E402
from kserve.protocol.rest import server as rest_server  # noqa: E402
from tuned_fastapi import traced_model  # noqa: E402


class Digits(kserve.Model):
    def __init__(self, name: str, path: str):
        super().__init__(name)
        self.path = path
        self._graph: Any = None

    def load(self) -> bool:
        self._graph, _ = traced_model(self.path)
        self.ready = True
        return self.ready

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_graph": None}

    def __setstate__(self, state: dict[str, Any]) -> None:  # in each spawned worker
        self.__dict__.update(state)
        self.load()

    def predict(self, payload: dict, headers: dict[str, str] | None = None) -> dict[str, Any]:
        rows = np.asarray(payload["instances"], dtype=np.float32)
        return {"predictions": self._graph(rows).numpy()}  # KServe answers with ORJSONResponse


def _loopback(init: Any) -> Any:
    def patched(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.config.host = "127.0.0.1"
    return patched


def main() -> None:
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_path", required=True)
    args, _ = parser.parse_known_args()
    rest_server.RESTServer.__init__ = _loopback(rest_server.RESTServer.__init__)
    model = Digits(args.model_name if args.model_name != "model" else "digits_mlp", args.model_path)
    model.load()
    kserve.ModelServer().start([model])


if __name__ == "__main__":
    main()
