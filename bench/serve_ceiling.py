"""The ceiling: how fast the same stacks answer when the model costs nothing, and so where a
request's time goes. One run, the load and method of bench/serve_load.py (wrk -t2 -c32, single-row
then 64-row TF Serving `:predict` requests, rounds in alternating order, answers checked first):

  * ours: the shipped app (configs/serve/digits.yaml, HAProxy direct ingress, niceness 0) on the
    bench MLP, as in bench/serve_load.py;
  * ours_noop: the same app, config and request path (API key check, body read under the size
    bound, orjson parse, TF Serving envelope, row validation, @serve.batch, metrics, lineage
    headers, orjson answer), serving a registered ONNX model that does no arithmetic: Reshape to
    64 values per row and Slice the first 10 (the MLP's output size), a few microseconds in ONNX
    Runtime. The registry accepts it as any ONNX variant (runtime onnxruntime), so nothing in
    maas/ or serve/ is changed or bypassed. What remains is everything but the model's arithmetic
    (and TensorFlow's per-call overhead);
  * serve_constant: a bench-only Serve deployment (bench/peers/serve_constant.py) with the
    Ingress's name and settings, on the same Ray with the same HAProxy ingress, whose route reads
    the body and answers a canned answer of the right size: HTTP + HAProxy + Serve's request path
    alone;
  * tuned_fastapi: the tuned peer of bench/serve_load.py (uvicorn --workers 2, orjson, traced
    tf.function);
  * uvicorn_constant: the same uvicorn stack (2 workers, uvloop, httptools) reading the body and
    answering the same canned answer: HTTP alone, without Ray.

Budget: wrk's run also records the CPU time every process spent, by kind (wrk, HAProxy, the Serve
replica, the rest of Ray, a peer's processes). Per request, the Ingress replica's time splits by
difference: serve_constant's is Serve's own HTTP request path; ours_noop's minus that is our
handling (parse, validation, batching, metrics, answer); ours' minus ours_noop's is the model call.
The replica is one process: 1e6 / its microseconds per request is the most req/s it can give.

    .venv/bin/python bench/serve_ceiling.py [--seconds 15] [--rounds 2] [--python-proxy]

Last line: RESULT ours_rps=.. noop_rps=.. serve_constant_rps=.. uvicorn_constant_rps=.. (and the
same as rows/s), then the shares of ours' per-request time (single-row, then 64-row).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from serve_load import (  # noqa: E402
    PEERS,
    answers_match,
    model_outputs,
    print_table,
    publish_model,
    request_bodies,
    run_rounds,
    start_ours,
    start_uvicorn,
)

sys.path.insert(0, str(PEERS))
from tuned_fastapi import canned_answers  # noqa: E402

NOOP_OUTPUTS = 10


def noop_onnx(row_shape: tuple[int, ...] = (8, 8)) -> bytes:
    """An ONNX model that does no arithmetic: each row flattened, its first 10 values returned."""
    import onnx
    from onnx import TensorProto, helper

    width = int(np.prod(row_shape))
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["flat"]),
         helper.make_node("Slice", ["flat", "starts", "ends", "axes"], ["y"])],
        "noop",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *row_shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", NOOP_OUTPUTS])],
        initializer=[helper.make_tensor("shape", TensorProto.INT64, [2], [-1, width]),
                     helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
                     helper.make_tensor("ends", TensorProto.INT64, [1], [NOOP_OUTPUTS]),
                     helper.make_tensor("axes", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def publish_noop(root: str) -> None:
    """The no-op ONNX model as version 1 of digits_mlp in its own registry, with the bench
    model's schema and the metadata an ONNX variant carries."""
    from maas.data import DataSchema
    from maas.registry import Registry

    schema = DataSchema(input_shape=(8, 8), classes=list(range(10)), source="bench")
    with tempfile.TemporaryDirectory() as staged:
        Path(staged, "model.onnx").write_bytes(noop_onnx())
        Registry(root).publish("digits_mlp", staged, {
            "schema": schema.to_dict(), "format": "model.onnx",
            "artifact": {"format": "onnx", "file": "model.onnx", "runtime": "onnxruntime",
                         "input": "x", "output": "y", "opset": 17, "quantization": None}})


def as_constant_app(config: dict[str, Any]) -> dict[str, Any]:
    """digits.yaml with bench/peers/serve_constant.py's app in place of ours, same settings."""
    app = config["applications"][0]
    app["import_path"] = "serve_constant:build_app"
    app["args"] = {}
    for deployment in app["deployments"]:
        deployment.pop("user_config", None)  # the constant app has no models to configure
    return config


def server_us(r: dict[str, float]) -> float:
    """Server-side CPU microseconds per request: every process but wrk and unrelated ones."""
    return r["us_haproxy"] + r["us_replica"] + r["us_ray"] + r["us_server"]


def print_budget(results: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Where ours' server-side CPU per request goes, from per-process CPU time (bench/serve_load.py
    run_wrk): HAProxy; in the Ingress replica, Serve's own request path (serve_constant's replica
    time), our handling (ours_noop's replica time minus that) and the model call (ours' minus
    ours_noop's); the rest of Ray. The replica is one process on one event loop: it caps req/s at
    1e6 / its microseconds per request."""
    shares: dict[str, dict[str, float]] = {}
    for size, label in (("one", "single-row"), ("many", "64-row")):
        ours, noop, const = (results[n][size] for n in ("ours", "ours_noop", "serve_constant"))
        total = server_us(ours)
        parts = {
            "haproxy": ours["us_haproxy"],
            "serve_request_path": const["us_replica"],
            "our_handling": noop["us_replica"] - const["us_replica"],
            "model_call": ours["us_replica"] - noop["us_replica"],
            "ray_rest": ours["us_ray"] + ours["us_server"],
        }
        shares[size] = {k: v / total for k, v in parts.items()}
        text = {
            "haproxy": "HAProxy (its own process)",
            "serve_request_path": "replica: Serve's HTTP request path, canned answer (serve_constant)",
            "our_handling": "replica: key, parse, validate, batch, metrics, answer (noop - constant)",
            "model_call": "replica: the model call, TF graph (ours - ours_noop)",
            "ray_rest": "rest of Ray (controller, raylet, GCS, serve run)",
        }
        print(f"\n{label}: server-side CPU per request of ours, by process and by difference")
        for key, value in parts.items():
            print(f"  {text[key]:<76} {value:7.0f} us  {shares[size][key]:4.0%}")
        print(f"  {'all server-side CPU (wrk: ' + format(ours['us_wrk'], '.0f') + ' us more)':<76} "
              f"{total:7.0f} us  100%")
        print(f"  the replica, one event loop, caps ours at 1e6 / {ours['us_replica']:.0f} us = "
              f"{1e6 / ours['us_replica']:.0f} req/s (measured {ours['rps']:.0f}); ours_noop at "
              f"{1e6 / noop['us_replica']:.0f} (measured {noop['rps']:.0f}); serve_constant at "
              f"{1e6 / const['us_replica']:.0f} (measured {const['rps']:.0f})")
        if "uvicorn_constant" in results:
            tuned, bare = results["tuned_fastapi"][size], results["uvicorn_constant"][size]
            print(f"  peers: uvicorn, 2 workers, canned answer {server_us(bare):.0f} us; tuned FastAPI "
                  f"with the model {server_us(tuned):.0f} us (its parse + model + answer: "
                  f"{server_us(tuned) - server_us(bare):.0f} us), over two processes")
    return shares


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=2, help="measurements per server (averaged)")
    parser.add_argument("--python-proxy", action="store_true",
                        help="Serve's Python proxy instead of the HAProxy direct ingress we ship")
    parser.add_argument("--worker-niceness", type=int, default=0)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install wrk")
    haproxy, niceness = not args.python_proxy, args.worker_niceness
    bodies = request_bodies()
    rows = {size: np.asarray(json.loads(body)["instances"], dtype=np.float32)
            for size, body in bodies.items()}
    canned = {size: np.asarray(json.loads(answer)["predictions"])
              for size, answer in zip(("one", "many"), canned_answers(NOOP_OUTPUTS), strict=True)}
    peers_path = {"PYTHONPATH": os.pathsep.join(filter(None, [str(PEERS), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        registry, noop_registry = f"{tmp}/registry", f"{tmp}/registry_noop"
        model_file = publish_model(registry)
        publish_noop(noop_registry)
        starters = {
            "ours": lambda p: start_ours(registry, p, work, haproxy, niceness),
            "ours_noop": lambda p: start_ours(noop_registry, p, work, haproxy, niceness),
            "serve_constant": lambda p: start_ours(registry, p, work, haproxy, niceness,
                                                   edit=as_constant_app, extra_env=peers_path),
            "tuned_fastapi": lambda p: start_uvicorn("create_app", p, work, model_file),
            "uvicorn_constant": lambda p: start_uvicorn("create_constant_app", p, work),
        }
        model = answers_match(model_outputs(model_file, bodies), bodies)
        checks = {"ours": model, "tuned_fastapi": model,
                  "ours_noop": answers_match({k: v.reshape(len(v), -1)[:, :NOOP_OUTPUTS]
                                              for k, v in rows.items()}, bodies),
                  "serve_constant": answers_match(canned, bodies),
                  "uvicorn_constant": answers_match(canned, bodies)}
        results = run_rounds(starters, checks, bodies, args.seconds, args.rounds, work)
    print_table(results)
    shares = print_budget(results)
    r = results
    print(f"RESULT ours_rps={r['ours']['one']['rps']:.0f} noop_rps={r['ours_noop']['one']['rps']:.0f} "
          f"serve_constant_rps={r['serve_constant']['one']['rps']:.0f} "
          f"tuned_rps={r['tuned_fastapi']['one']['rps']:.0f} "
          f"uvicorn_constant_rps={r['uvicorn_constant']['one']['rps']:.0f} "
          f"ours_rows={r['ours']['many']['rps'] * 64:.0f} noop_rows={r['ours_noop']['many']['rps'] * 64:.0f} "
          f"serve_constant_rows={r['serve_constant']['many']['rps'] * 64:.0f} "
          f"tuned_rows={r['tuned_fastapi']['many']['rps'] * 64:.0f} "
          f"uvicorn_constant_rows={r['uvicorn_constant']['many']['rps'] * 64:.0f} "
          + " ".join(f"{size}_{part}={share:.2f}" for size, parts in shares.items()
                     for part, share in parts.items()))


if __name__ == "__main__":
    main()
