"""Served throughput, memory and start-up per runtime, side by side in one run: the same trained
digits MLP as its Keras version (TensorFlow), its ONNX fp32 variant and its int8 (dynamic) variant
(ONNX Runtime), each served by the shipped configs/serve/digits.yaml (hosting: ingress, one
replica) with `runtime` and the version pinned, on Ray with Serve's HAProxy ingress as `make demo`
starts it (`--no-haproxy`: Serve's Python proxy). Load: `wrk`, 32 connections, single-row then
64-row TF Serving requests (bench/serve_load.py's method), rounds in alternating order.

    .venv/bin/python bench/serve_runtimes.py [--seconds 15] [--rounds 2] [--hidden 128] [--no-haproxy]

Also per server: the Ingress replica's resident memory (VmRSS, after the load) and the seconds
from `serve run` to the first answer (Ray's own start included, the same for every runtime).

Last line: RESULT onnx_rps_ratio=.. onnx_rows_ratio=.. onnx_rss_ratio=.. int8_rps_ratio=..
int8_rows_ratio=.. (each against the TensorFlow version of the same run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from serve_load import free_port, run_wrk, start_ours  # noqa: E402

SERVERS = {"tensorflow": ("tensorflow", 1), "onnx": ("onnxruntime", 2), "int8": ("onnxruntime", 3)}


def publish_variants(root: str, hidden: int) -> None:
    """Version 1: the digits MLP trained here (Keras fit, 5 epochs); 2: ONNX fp32; 3: int8."""
    from maas.config import DataConfig, ModelConfig, TrainJobConfig, config_to_dict
    from maas.data import load_dataset
    from maas.models import build_model, compile_model
    from maas.optimize.pipeline import run_recipe
    from maas.optimize.recipe import RecipeConfig
    from maas.registry import Registry
    from maas.tfkeras import save_model

    cfg = TrainJobConfig(data=DataConfig(source="digits"), model=ModelConfig(hidden_units=[hidden]))
    splits = load_dataset(cfg.data)
    model = build_model(cfg.model, splits.schema, splits.x_train.mean(axis=0), splits.x_train.var(axis=0) + 1)
    compile_model(model, cfg.optimizer)
    model.fit(splits.x_train, splits.y_train, epochs=5, batch_size=64, verbose=0)
    with tempfile.TemporaryDirectory() as staged:
        save_model(model, f"{staged}/model.keras")
        Registry(root).publish("digits_mlp", staged, {
            "schema": splits.schema.to_dict(), "config": config_to_dict(cfg), "format": "model.keras",
            "lineage": {"data_fingerprint": splits.fingerprint}, "metrics": {}})
    recipe = RecipeConfig.model_validate({"variants": [{"kind": "onnx"}, {"kind": "onnx-int8"}],
                                          "evaluation": {"batch_sizes": [1], "repeats": 5}})
    outcome = run_recipe(Registry(root), "digits_mlp", "1", recipe, log=lambda *a, **k: None)
    if outcome.refusals:
        sys.exit(f"a variant was refused: {outcome.refusals}")


def pin(runtime: str, version: int):
    def edit(config: dict[str, Any]) -> dict[str, Any]:
        settings = config["applications"][0]["deployments"][0]["user_config"]["models"]["digits_mlp"]
        settings.update(runtime=runtime, versions={"specific": [version]}, poll_registry_s=0)
        return config
    return edit


def ingress_rss_mib() -> float:
    """VmRSS of the Ingress replica (it hosts the model), found by Ray's process title."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().startswith(b"ray::ServeReplica:maas:Ingress"):
                status = (cmdline.parent / "status").read_text().splitlines()
                return int(next(line for line in status if line.startswith("VmRSS")).split()[1]) / 1024
        except (OSError, StopIteration):
            continue
    return float("nan")


def wait_first_answer(url: str, body: str, started: float, timeout: float = 240) -> float:
    import requests

    while time.perf_counter() - started < timeout:
        try:
            reply = requests.post(url, data=body, timeout=5)
            if reply.status_code == 200:
                return time.perf_counter() - started
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {timeout} s")


def measure(name: str, root: str, one: str, many: str, seconds: int, work: Path,
            haproxy: bool) -> dict[str, float]:
    runtime, version = SERVERS[name]
    port = free_port()
    started = time.perf_counter()
    server = start_ours(root, port, work, haproxy=haproxy, niceness=0, edit=pin(runtime, version))
    url = f"http://127.0.0.1:{port}/v1/models/digits_mlp:predict"
    try:
        first_answer_s = wait_first_answer(url, one, started)
        served = json.loads(__import__("requests").get(url.rsplit(":", 1)[0], timeout=10).text)
        assert served["model_version_status"][0]["version"] == str(version), served
        run_wrk(url, one, 3, work)  # warm-up
        single, batch = run_wrk(url, one, seconds, work), run_wrk(url, many, seconds, work)
        return {"rps": single["rps"], "p99": single["p99"], "rows": batch["rps"] * 64,
                "p99_64": batch["p99"], "errors": single["errors"] + batch["errors"],
                "rss_mib": ingress_rss_mib(), "first_answer_s": first_answer_s}
    finally:
        os.killpg(server.pid, 2)
        server.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=2, help="measurements per server (median)")
    parser.add_argument("--hidden", type=int, default=128, help="hidden units of the MLP")
    parser.add_argument("--no-haproxy", action="store_true", help="Serve's Python proxy instead")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install wrk")
    rng = np.random.default_rng(0)
    one = json.dumps({"instances": [(rng.random((8, 8)) * 16).round(2).tolist()]})
    many = json.dumps({"instances": (rng.random((64, 8, 8)) * 16).round(2).tolist()})
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in SERVERS}
    with tempfile.TemporaryDirectory() as tmp:
        root = f"{tmp}/registry"
        publish_variants(root, args.hidden)
        names = list(SERVERS)
        for round_number in range(args.rounds):  # alternating order: this VM's speed drifts
            for name in names if round_number % 2 == 0 else names[::-1]:
                runs[name].append(measure(name, root, one, many, args.seconds, Path(tmp),
                                          not args.no_haproxy))
                print(name, {k: round(v, 1) for k, v in runs[name][-1].items()}, flush=True)
    result = {name: {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
              for name, rounds in runs.items()}
    print(f"\n{'runtime':<12} {'1-row req/s':>12} {'p99 ms':>8} {'64-row rows/s':>14} {'p99 ms':>8} "
          f"{'RSS MiB':>8} {'first answer s':>15} {'errors':>7}   (median of {args.rounds} rounds)")
    for name, r in result.items():
        print(f"{name:<12} {r['rps']:>12.0f} {r['p99']:>8.1f} {r['rows']:>14.0f} {r['p99_64']:>8.1f} "
              f"{r['rss_mib']:>8.0f} {r['first_answer_s']:>15.1f} {r['errors']:>7.0f}")
    tf_, onnx, int8 = result["tensorflow"], result["onnx"], result["int8"]
    print(f"RESULT onnx_rps_ratio={onnx['rps'] / tf_['rps']:.2f} "
          f"onnx_rows_ratio={onnx['rows'] / tf_['rows']:.2f} "
          f"onnx_rss_ratio={onnx['rss_mib'] / tf_['rss_mib']:.2f} "
          f"int8_rps_ratio={int8['rps'] / tf_['rps']:.2f} "
          f"int8_rows_ratio={int8['rows'] / tf_['rows']:.2f} tf_rss_mib={tf_['rss_mib']:.0f} "
          f"onnx_rss_mib={onnx['rss_mib']:.0f} tf_first_answer_s={tf_['first_answer_s']:.1f} "
          f"onnx_first_answer_s={onnx['first_answer_s']:.1f}")


if __name__ == "__main__":
    main()
