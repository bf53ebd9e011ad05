"""Serving throughput, side by side in one run on the same model: our Serve app (as deployed from
configs/serve/digits.yaml: the model hosted in the ingress, one replica) against the server a user
would otherwise write: one FastAPI + uvicorn process calling the model directly. Load: `wrk`
(apt-get install wrk), 32 connections, single-row then 64-row TF Serving requests.

    .venv/bin/python bench/serve_load.py [--seconds 15] [--rounds 2] [--haproxy] [--deployment-hosting]
                                         [--audit]

`--haproxy` starts Ray with RAY_SERVE_ENABLE_DIRECT_INGRESS=1 RAY_SERVE_ENABLE_HA_PROXY=1, as
`make demo` and cluster.yaml do. `--audit` adds the same app writing every prediction to the audit
trail (audit_sample_rate: 1.0; the shipped default samples 1%): the audit trail's cost.
`--deployment-hosting` adds a third server to the same run: the
same config with the model in a deployment of its own (hosting: deployment, one more Serve hop).

Last line: RESULT rps=.. base_rps=.. rps_ratio=.. p99_ms=.. rows_per_s=.. base_rows_per_s=.. rows_ratio=..
(single-row figures first, then 64-row).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BASELINE = r'''
import json, sys
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response
import tf_keras
model = tf_keras.models.load_model(sys.argv[1], compile=False)
model(np.zeros((1, 8, 8), dtype="float32"))
app = FastAPI()

@app.post("/v1/models/digits_mlp:predict")
async def predict(request: Request):
    rows = np.asarray(json.loads(await request.body())["instances"], dtype="float32")
    out = np.asarray(model(rows, training=False))
    return Response(json.dumps({"predictions": out.tolist()}), media_type="application/json")

import uvicorn
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="error")
'''

LUA = 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [==[{body}]==]\n'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, body: str, timeout: float = 180) -> None:
    import requests

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if requests.post(url, data=body, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} did not answer")


def run_wrk(url: str, body: str, seconds: int, work: Path) -> dict[str, float]:
    script = work / "post.lua"
    script.write_text(LUA.format(body=body))
    out = subprocess.run(["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=True)
    out = out.stdout + out.stderr
    if "unexpected symbol" in out or not re.search(r"Requests/sec", out):
        raise RuntimeError(f"wrk failed:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"rps": rps, "p50": _latency(out, "50%"), "p99": _latency(out, "99%"),
            "errors": int(non2xx.group(1)) if non2xx else 0}


def _latency(out: str, percentile: str) -> float:
    value, unit = re.search(rf"{percentile}\s+([\d.]+)(us|ms|s)", out).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def publish_model(root: str) -> str:
    from maas.config import ModelConfig, OptimizerConfig
    from maas.data import DataSchema
    from maas.models import build_model, compile_model
    from maas.registry import Registry
    from maas.tfkeras import save_model

    schema = DataSchema(input_shape=(8, 8), classes=list(range(10)), source="bench")
    model = build_model(ModelConfig(hidden_units=[128]), schema, np.zeros((8, 8)), np.ones((8, 8)))
    compile_model(model, OptimizerConfig())
    with tempfile.TemporaryDirectory() as staged:
        save_model(model, f"{staged}/model.keras")
        version = Registry(root).publish("digits_mlp", staged, {"schema": schema.to_dict()})
    return f"{version.uri}/model.keras"


def as_deployment_hosting(config: dict[str, Any]) -> dict[str, Any]:
    """The same app with each ingress-hosted model moved to a deployment of its own, with the
    settings configs/serve/digits.yaml gave that deployment before models could live in the
    ingress, and the model's own settings as its user_config."""
    app = config["applications"][0]
    ingress = next(d for d in app["deployments"] if d["name"] == "Ingress")
    hosted = ingress.pop("user_config", {}).get("models", {})
    ingress.pop("autoscaling_config", None)
    for model in app["args"]["models"]:
        model["hosting"] = "deployment"
        app["deployments"].append({
            "name": model["name"], "max_ongoing_requests": 64, "max_queued_requests": 512,
            "backpressure_config": {"status_code": 503, "retry_after_s": 1},
            "autoscaling_config": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 24,
                                   "upscale_delay_s": 5, "downscale_delay_s": 30},
            "user_config": hosted.get(model["name"], {})})
    return config


def audit_everything(config: dict[str, Any]) -> dict[str, Any]:
    config["applications"][0]["args"]["audit_sample_rate"] = 1.0
    return config


def start_ours(root: str, port: int, work: Path, haproxy: bool, niceness: int,
               edit: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> subprocess.Popen:
    """``serve run`` of configs/serve/digits.yaml (changed by ``edit`` if given) on a Ray of its own."""
    import yaml

    config = yaml.safe_load((REPO / "configs/serve/digits.yaml").read_text())
    if edit is not None:
        config = edit(config)
    config["http_options"]["port"] = port
    config["applications"][0]["args"]["registry_root"] = root
    path = work / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    # Ray starts worker processes at nice 15 by default; here wrk (nice 0) shares the 2 cores,
    # so both servers run at the load generator's priority unless --worker-niceness says otherwise.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_worker_niceness": str(niceness)}
    if haproxy:
        env.update(RAY_SERVE_ENABLE_DIRECT_INGRESS="1", RAY_SERVE_ENABLE_HA_PROXY="1")
    # --address local: a Ray of its own, never one whose address a previous `ray start` left behind
    return subprocess.Popen([str(Path(sys.executable).parent / "serve"), "run", "--address", "local",
                             str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def measure(start: Any, one: str, many: str, seconds: int, work: Path) -> dict[str, dict[str, float]]:
    port = free_port()
    server = start(port)
    url = f"http://127.0.0.1:{port}/v1/models/digits_mlp:predict"
    try:
        wait_ready(url, one)
        run_wrk(url, one, 3, work)  # warm-up
        return {"one": run_wrk(url, one, seconds, work), "many": run_wrk(url, many, seconds, work)}
    finally:
        os.killpg(server.pid, 2)
        server.wait(timeout=120)


def _mean(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {size: {key: float(np.mean([r[size][key] for r in rounds])) for key in rounds[0][size]}
            for size in rounds[0]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--haproxy", action="store_true", help="Serve's HAProxy direct ingress")
    parser.add_argument("--rounds", type=int, default=2, help="measurements per server (averaged)")
    parser.add_argument("--worker-niceness", type=int, default=0,
                        help="nice value of Ray's workers (Ray's own default: 15)")
    parser.add_argument("--deployment-hosting", action="store_true",
                        help="also measure the model in a deployment of its own (hosting: deployment)")
    parser.add_argument("--audit", action="store_true",
                        help="also measure the app writing every prediction to the audit trail")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install wrk")
    one = json.dumps({"instances": [np.random.rand(8, 8).round(3).tolist()]})
    many = json.dumps({"instances": np.random.rand(64, 8, 8).round(3).tolist()})
    names = ["baseline", "ours", *(["ours_deployment"] if args.deployment_hosting else []),
             *(["ours_audit_all"] if args.audit else [])]
    runs: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_file = publish_model(f"{tmp}/registry")
        starters = {
            "baseline": lambda p: subprocess.Popen([sys.executable, "-c", BASELINE, model_file, str(p)],
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                                   start_new_session=True),
            "ours": lambda p: start_ours(f"{tmp}/registry", p, work, args.haproxy, args.worker_niceness),
            "ours_deployment": lambda p: start_ours(f"{tmp}/registry", p, work, args.haproxy,
                                                    args.worker_niceness, edit=as_deployment_hosting),
            "ours_audit_all": lambda p: start_ours(f"{tmp}/registry", p, work, args.haproxy,
                                                   args.worker_niceness, edit=audit_everything),
        }
        # Rounds in alternating order: this VM's speed drifts by tens of percent between minutes,
        # and a ratio of two back-to-back measurements is what we trust.
        for round_number in range(args.rounds):
            order = names if round_number % 2 == 0 else names[::-1]
            for name in order:
                runs[name].append(measure(starters[name], one, many, args.seconds, work))
    results = {name: _mean(rounds) for name, rounds in runs.items()}
    print(f"\n{'server':<16} {'1-row req/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'64-row req/s':>13} "
          f"{'rows/s':>9} {'p99 ms':>8} {'errors':>7}")
    for name, r in results.items():
        print(f"{name:<16} {r['one']['rps']:>12.0f} {r['one']['p50']:>8.1f} {r['one']['p99']:>8.1f} "
              f"{r['many']['rps']:>13.1f} {r['many']['rps'] * 64:>9.0f} {r['many']['p99']:>8.1f} "
              f"{r['one']['errors'] + r['many']['errors']:>7.0f}")
    ours, base = results["ours"], results["baseline"]
    if args.audit:
        audited = results["ours_audit_all"]
        print(f"audit at 100%: {audited['one']['rps'] / ours['one']['rps']:.3f}x single-row req/s, "
              f"{audited['many']['rps'] / ours['many']['rps']:.3f}x 64-row req/s of the shipped 1% sampling")
    print(f"RESULT rps={ours['one']['rps']:.0f} base_rps={base['one']['rps']:.0f} "
          f"rps_ratio={ours['one']['rps'] / base['one']['rps']:.2f} p99_ms={ours['one']['p99']:.1f} "
          f"rows_per_s={ours['many']['rps'] * 64:.0f} base_rows_per_s={base['many']['rps'] * 64:.0f} "
          f"rows_ratio={ours['many']['rps'] / base['many']['rps']:.2f}"
          + (f" audit_rps_ratio={results['ours_audit_all']['one']['rps'] / ours['one']['rps']:.3f}"
             f" audit_rows_ratio={results['ours_audit_all']['many']['rps'] / ours['many']['rps']:.3f}"
             if args.audit else ""))


if __name__ == "__main__":
    main()
