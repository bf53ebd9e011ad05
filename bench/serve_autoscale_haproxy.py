"""Does the Ingress, hosting the model (hosting: ingress), autoscale in HAProxy mode? Serve's
direct-ingress replicas report their own ongoing requests to the autoscaler (HAProxy bypasses
the handles that report them otherwise); this checks it end to end on one machine.

    .venv/bin/python bench/serve_autoscale_haproxy.py [--seconds 30]

Deploys configs/serve/digits.yaml (with a low target_ongoing_requests and short delays) on a Ray
of its own started with RAY_SERVE_ENABLE_DIRECT_INGRESS=1 RAY_SERVE_ENABLE_HA_PROXY=1, loads it
with wrk at 32 connections, and samples the Ingress's replicas during and after the load.
Last line: RESULT max_replicas_under_load=.. replicas_after=.. load_rps=.. load_errors=..
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import free_port, publish_model, run_wrk, start_ours, wait_ready  # noqa: E402

AUTOSCALING = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2,
               "upscale_delay_s": 1, "downscale_delay_s": 5, "metrics_interval_s": 0.5,
               "look_back_period_s": 2}


def with_autoscaling(config: dict) -> dict:
    app = config["applications"][0]
    next(d for d in app["deployments"] if d["name"] == "Ingress")["autoscaling_config"] = AUTOSCALING
    return config


def ingress_replicas(env: dict[str, str]) -> int:
    out = subprocess.run([str(Path(sys.executable).parent / "serve"), "status"], env=env,
                         capture_output=True, text=True, timeout=60).stdout
    states = yaml.safe_load(out)["applications"]["maas"]["deployments"]["Ingress"]["replica_states"]
    return states.get("RUNNING", 0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=30)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    publish_model(f"{work}/registry")
    port = free_port()
    # Ray's default worker niceness (15), as this check was first run with
    server = start_ours(f"{work}/registry", port, work, haproxy=True, niceness=15, edit=with_autoscaling)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # for `serve status` against that Ray
    url = f"http://127.0.0.1:{port}/v1/models/digits_mlp:predict"
    body = '{"instances": [' + str([[0.0] * 8] * 8) + "]}"
    try:
        wait_ready(url, body)
        before = ingress_replicas(env)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            load = pool.submit(run_wrk, url, body, args.seconds, work)
            under_load = []
            while not load.done():
                under_load.append(ingress_replicas(env))
                time.sleep(2)
            figures = load.result()
        after, deadline = [], time.time() + 90
        while time.time() < deadline and (not after or after[-1] != 1):
            time.sleep(2)
            after.append(ingress_replicas(env))
    finally:
        os.killpg(server.pid, 2)
        server.wait(timeout=120)
    print(f"Ingress replicas: before {before}, under load {under_load}, after {after}")
    print(f"RESULT max_replicas_under_load={max(under_load)} replicas_after={after[-1]} "
          f"load_rps={figures['rps']:.0f} load_errors={figures['errors']}")


if __name__ == "__main__":
    main()
