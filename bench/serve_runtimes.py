"""Served throughput, memory and start-up per runtime, side by side in one run: one trained MLP as
its Keras version (TensorFlow), its ONNX fp32 variant and its int8 (dynamic) variant (ONNX
Runtime), each served by the shipped configs/serve/digits.yaml (hosting: ingress, its two Ingress
replicas, the worker setup hook) with `runtime` and the version pinned, on Ray with Serve's HAProxy
ingress as `make demo` starts it (`--no-haproxy`: Serve's Python proxy). Rounds in alternating
order.

    flock /tmp/maas-ray.lock .venv/bin/python bench/serve_runtimes.py [--model digits|wide]
        [--seconds 15] [--rounds 2] [--hidden 128] [--no-haproxy]

--model digits (default): the demo's digits MLP (64 pixels -> --hidden -> 10), trained 5 epochs.
--model wide: bench/optimize_tradeoff.py's 784-512-512-10 MLP on generated rows, trained 5
epochs: wide layers, where the model call is a large share of a 64-row request.

Load per server: `wrk`, 2 threads, 32 connections: single-row and 64-row TF Serving REST requests
(bench/serve_load.py's method), and 64-row Open Inference Protocol requests with binary tensor
data both ways (bench/serve_binary.py's body; what `tritonclient` sends). Before timing, each
server's JSON and binary answers are checked equal to each other and, across servers, to the
TensorFlow version's (ONNX fp32 within 1e-4; int8 by top-1 class on at least 90% of rows).

Also per server: the Ingress replicas' resident memory (VmRSS and PSS from /proc smaps_rollup,
the mean over replicas, after the load), which of TensorFlow, pandas, pyarrow and ONNX Runtime
their memory maps hold, and the seconds from `serve run` to the first answer (Ray's own start
included, the same for every runtime).

Last line: RESULT onnx_rps_ratio=.. onnx_rows_ratio=.. onnx_binary_rows_ratio=.. onnx_rss_ratio=..
int8_rps_ratio=.. int8_rows_ratio=.. int8_binary_rows_ratio=.. (each against the TensorFlow
version of the same run), then the absolute figures.
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

import serve_binary  # noqa: E402
from serve_load import free_port, run_wrk, start_ours  # noqa: E402

from maas.serving.oip_binary import INFERENCE_HEADER, encode_binary_request  # noqa: E402

SERVERS = {"tensorflow": ("tensorflow", 1), "onnx": ("onnxruntime", 2), "int8": ("onnxruntime", 3)}
MODELS = {"digits": ("digits_mlp", (8, 8)), "wide": ("wide_mlp", (784,))}
LIBRARIES = ("tensorflow", "pandas", "pyarrow", "onnxruntime")
ROWS = 64


def publish_variants(root: str, model: str, hidden: int, work: Path) -> None:
    """Version 1: the MLP trained here (Keras fit, 5 epochs); 2: ONNX fp32; 3: int8 dynamic."""
    from optimize_tradeoff import jobs, train_and_register

    from maas.config import DataConfig, ModelConfig, OptimizerConfig, TrainJobConfig
    from maas.optimize.pipeline import run_recipe
    from maas.optimize.recipe import RecipeConfig
    from maas.registry import Registry

    name = MODELS[model][0]
    if model == "digits":
        cfg = TrainJobConfig(data=DataConfig(source="digits"), model=ModelConfig(hidden_units=[hidden]),
                             optimizer=OptimizerConfig())
    else:
        cfg = jobs(work)["wide_mlp"]
    train_and_register(root, name, cfg, epochs=5)
    recipe = RecipeConfig.model_validate({"variants": [{"kind": "onnx"}, {"kind": "onnx-int8"}],
                                          "evaluation": {"batch_sizes": [1], "repeats": 5}})
    outcome = run_recipe(Registry(root), name, "1", recipe, log=lambda *a, **k: None)
    if outcome.refusals:
        sys.exit(f"a variant was refused: {outcome.refusals}")


def pin(name: str, runtime: str, version: int):
    """configs/serve/digits.yaml serving only ``version`` of ``name`` (in digits_mlp's settings)."""
    def edit(config: dict[str, Any]) -> dict[str, Any]:
        app = config["applications"][0]
        app["args"]["models"] = [{"name": name, "hosting": "ingress"}]
        models = next(d for d in app["deployments"] if d["name"] == "Ingress")["user_config"]["models"]
        settings = models.pop("digits_mlp")
        settings.update(runtime=runtime, versions={"specific": [version]}, poll_registry_s=0)
        models[name] = settings
        return config
    return edit


def ingress_memory() -> dict[str, Any]:
    """Mean VmRSS and PSS (MiB) of the Ingress replicas (they host the model), found by Ray's
    process title, and the libraries of LIBRARIES their memory maps hold."""
    rss, pss, loaded = [], [], set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if not cmdline.read_bytes().startswith(b"ray::ServeReplica:maas:Ingress"):
                continue
            rollup = (cmdline.parent / "smaps_rollup").read_text().splitlines()[1:]
            maps = (cmdline.parent / "maps").read_text()
        except OSError:
            continue
        kib = {key: int(value.split()[0]) for key, value in (line.split(":", 1) for line in rollup)}
        rss.append(kib["Rss"] / 1024)
        pss.append(kib["Pss"] / 1024)
        loaded |= {name for name in LIBRARIES if f"/{name}/" in maps}
    return {"rss_mib": statistics.mean(rss) if rss else float("nan"),
            "pss_mib": statistics.mean(pss) if pss else float("nan"),
            "libraries": ",".join(name for name in LIBRARIES if name in loaded) or "-"}


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


def requests_for(model: str) -> dict[str, Any]:
    """The same rows three ways: one-row and 64-row TF Serving JSON, 64-row OIP binary."""
    shape = MODELS[model][1]
    rng = np.random.default_rng(0)
    rows = (rng.random((ROWS, *shape)) * 16 if model == "digits" else rng.normal(0, 1, (ROWS, *shape)))
    rows = rows.round(3).astype(np.float32)
    tensor = {"name": "inputs", "shape": [ROWS, *shape], "datatype": "FP32"}
    binary, header_size = encode_binary_request(
        {"inputs": [tensor], "parameters": {"binary_data_output": True}}, {"inputs": rows})
    return {"rows": rows, "one": json.dumps({"instances": rows[:1].tolist()}),
            "many": json.dumps({"instances": rows.tolist()}), "binary": binary,
            "binary_headers": {"Content-Type": "application/octet-stream",
                               INFERENCE_HEADER: str(header_size)}}


def answers(base: str, name: str, bodies: dict[str, Any]) -> np.ndarray:
    """The 64 rows' probabilities, asked both ways; they must agree before anything is timed."""
    import requests

    reply = requests.post(f"{base}/v1/models/{name}:predict", data=bodies["many"], timeout=30)
    reply.raise_for_status()
    as_json = np.asarray(reply.json()["predictions"], dtype=np.float32)
    as_binary = serve_binary.post(f"{base}/v2/models/{name}/infer", bodies["binary"],
                                  bodies["binary_headers"])
    np.testing.assert_allclose(as_binary.reshape(as_json.shape), as_json, atol=1e-5)
    return as_json


def measure(server: str, model: str, root: str, bodies: dict[str, Any], seconds: int, work: Path,
            haproxy: bool) -> tuple[dict[str, Any], np.ndarray]:
    runtime, version = SERVERS[server]
    name = MODELS[model][0]
    port = free_port()
    started = time.perf_counter()
    process = start_ours(root, port, work, haproxy=haproxy, niceness=0, edit=pin(name, runtime, version))
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/v1/models/{name}:predict"
    try:
        first_answer_s = wait_first_answer(url, bodies["one"], started)
        served = json.loads(__import__("requests").get(f"{base}/v1/models/{name}", timeout=10).text)
        assert served["model_version_status"][0]["version"] == str(version), served
        probabilities = answers(base, name, bodies)
        run_wrk(url, bodies["one"], 3, work)  # warm-up
        single = run_wrk(url, bodies["one"], seconds, work)
        batch = run_wrk(url, bodies["many"], seconds, work)
        binary = serve_binary.run_wrk(f"{base}/v2/models/{name}/infer", "binary", bodies["binary"],
                                      bodies["binary_headers"], seconds, work)
        return {"rps": single["rps"], "p99": single["p99"], "rows": batch["rps"] * ROWS,
                "p99_64": batch["p99"], "binary_rows": binary["rps"] * ROWS, "p99_binary": binary["p99"],
                "errors": single["errors"] + batch["errors"] + binary["errors"], **ingress_memory(),
                "first_answer_s": first_answer_s}, probabilities
    finally:
        os.killpg(process.pid, 2)
        process.wait(timeout=120)


def check_agreement(outputs: dict[str, np.ndarray]) -> None:
    """ONNX fp32 answers what TensorFlow answers; int8 picks the same class for >= 90% of rows."""
    reference = outputs["tensorflow"]
    np.testing.assert_allclose(outputs["onnx"], reference, atol=1e-4)
    agreement = float(np.mean(outputs["int8"].argmax(1) == reference.argmax(1)))
    assert agreement >= 0.9, f"int8 agrees with TensorFlow on {agreement:.0%} of rows"


def report(result: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\n{args.model} MLP   (median of {args.rounds} rounds; memory: mean over the Ingress replicas)")
    print(f"{'runtime':<11} {'1-row req/s':>11} {'p99 ms':>7} {'64-row rows/s':>14} {'p99 ms':>7} "
          f"{'binary rows/s':>14} {'p99 ms':>7} {'RSS MiB':>8} {'PSS MiB':>8} {'first s':>8} "
          f"{'errors':>6}  loaded")
    for name, r in result.items():
        print(f"{name:<11} {r['rps']:>11.0f} {r['p99']:>7.1f} {r['rows']:>14.0f} {r['p99_64']:>7.1f} "
              f"{r['binary_rows']:>14.0f} {r['p99_binary']:>7.1f} {r['rss_mib']:>8.0f} {r['pss_mib']:>8.0f} "
              f"{r['first_answer_s']:>8.1f} {r['errors']:>6.0f}  {r['libraries']}")
    tf_ = result["tensorflow"]
    ratios = {f"{name}_{key}_ratio": result[name][figure] / tf_[figure]
              for name in ("onnx", "int8")
              for key, figure in (("rps", "rps"), ("rows", "rows"), ("binary_rows", "binary_rows"),
                                  ("rss", "rss_mib"))}
    figures = {"tf_rss_mib": tf_["rss_mib"], "onnx_rss_mib": result["onnx"]["rss_mib"],
               "tf_first_answer_s": tf_["first_answer_s"],
               "onnx_first_answer_s": result["onnx"]["first_answer_s"]}
    print("RESULT " + " ".join(f"{k}={v:.2f}" for k, v in ratios.items()) + " "
          + " ".join(f"{k}={v:.1f}" for k, v in figures.items()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=sorted(MODELS), default="digits")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=2, help="measurements per server (median)")
    parser.add_argument("--hidden", type=int, default=128, help="hidden units of the digits MLP")
    parser.add_argument("--no-haproxy", action="store_true", help="Serve's Python proxy instead")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install wrk")
    bodies = requests_for(args.model)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SERVERS}
    outputs: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = f"{tmp}/registry"
        publish_variants(root, args.model, args.hidden, Path(tmp))
        names = list(SERVERS)
        for round_number in range(args.rounds):  # alternating order: this VM's speed drifts
            for name in names if round_number % 2 == 0 else names[::-1]:
                figures, outputs[name] = measure(name, args.model, root, bodies, args.seconds, Path(tmp),
                                                 not args.no_haproxy)
                runs[name].append(figures)
                print(name, {k: round(v, 1) if isinstance(v, float) else v for k, v in figures.items()},
                      flush=True)
            if round_number == 0:
                check_agreement(outputs)
    result = {name: {key: (statistics.median(r[key] for r in rounds) if key != "libraries"
                           else rounds[-1][key]) for key in rounds[0]}
              for name, rounds in runs.items()}
    report(result, args)


if __name__ == "__main__":
    main()
