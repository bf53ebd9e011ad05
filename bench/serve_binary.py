"""Open Inference Protocol (v2) infer with binary tensor data against JSON tensors, on the shipped
config (configs/serve/digits.yaml: the model hosted in the ingress, one replica, on a Ray started
with Serve's HAProxy direct ingress, RAY_SERVE_ENABLE_DIRECT_INGRESS=1 RAY_SERVE_ENABLE_HA_PROXY=1,
and RAY_worker_niceness=0), one server, in the same run: 64-row requests, rounds alternating
between the two bodies.

* json: ``{"inputs": [{"name", "shape": [64, 8, 8], "datatype": "FP32", "data": [...]}]}``,
  answered in JSON;
* binary: the same rows as raw little-endian FP32 after a JSON header
  (``Inference-Header-Content-Length``, ``binary_data_size``), answered with binary outputs
  (``binary_data_output: true``): what ``tritonclient.http`` sends and asks for by default.

Both answers are checked against each other before anything is timed. Load: `wrk` -t2 -c32 (a Lua
script reads the binary body from a file).

    flock /tmp/maas-ray.lock .venv/bin/python bench/serve_binary.py [--seconds 15] [--rounds 3]

Last line: RESULT binary_rows_per_s=.. json_rows_per_s=.. binary_over_json=..
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from serve_load import free_port, publish_model, start_ours, stop  # noqa: E402

from maas.serving.oip_binary import INFERENCE_HEADER, encode_binary_request  # noqa: E402

ROWS = 64
PATH = "/v2/models/digits_mlp/infer"
LUA = '''wrk.method = "POST"
local file = io.open("{body}", "rb")
wrk.body = file:read("*a")
file:close()
{headers}
'''


def bodies() -> dict[str, tuple[bytes, dict[str, str]]]:
    """The two requests for the same 64 rows: body and headers."""
    rows = np.random.default_rng(0).random((ROWS, 8, 8)).round(3).astype(np.float32)
    tensor = {"name": "inputs", "shape": [ROWS, 8, 8], "datatype": "FP32"}
    as_json = orjson.dumps({"inputs": [{**tensor, "data": rows.reshape(-1)}]},
                           option=orjson.OPT_SERIALIZE_NUMPY)
    binary, header_size = encode_binary_request(
        {"inputs": [tensor], "parameters": {"binary_data_output": True}}, {"inputs": rows})
    return {"binary": (binary, {"Content-Type": "application/octet-stream",
                                INFERENCE_HEADER: str(header_size)}),
            "json": (as_json, {"Content-Type": "application/json"})}


def post(url: str, body: bytes, headers: dict[str, str]) -> np.ndarray:
    """The answer's probabilities, from a JSON or a binary answer."""
    import requests

    reply = requests.post(url, data=body, headers=headers, timeout=30)
    reply.raise_for_status()
    size = int(reply.headers.get(INFERENCE_HEADER, len(reply.content)))
    output = orjson.loads(reply.content[:size])["outputs"][0]
    if "data" in output:
        values = np.asarray(output["data"], dtype=np.float32)
    else:
        values = np.frombuffer(reply.content[size:size + output["parameters"]["binary_data_size"]], "<f4")
    return values.reshape(output["shape"])


def wait_ready(url: str, body: bytes, headers: dict[str, str], timeout: float = 180) -> None:
    import requests

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if requests.post(url, data=body, headers=headers, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} did not answer")


def run_wrk(url: str, name: str, body: bytes, headers: dict[str, str], seconds: int,
            work: Path) -> dict[str, float]:
    data = work / f"{name}.body"
    data.write_bytes(body)
    script = work / f"{name}.lua"
    script.write_text(LUA.format(body=data, headers="\n".join(
        f'wrk.headers["{key}"] = "{value}"' for key, value in headers.items())))
    out = subprocess.run(["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=True)
    out = out.stdout + out.stderr
    if not re.search(r"Requests/sec", out):
        raise RuntimeError(f"wrk failed:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": _latency(out, "50%"), "p99": _latency(out, "99%"),
            "errors": int(non2xx.group(1)) if non2xx else 0}


def _latency(out: str, percentile: str) -> float:
    value, unit = re.search(rf"{percentile}\s+([\d.]+)(us|ms|s)\b", out).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3, help="measurements per body (averaged)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install wrk")
    requests_ = bodies()
    for name, (body, _) in requests_.items():
        print(f"{name}: {len(body)} bytes per {ROWS}-row request", flush=True)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in requests_}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        registry = f"{tmp}/registry"
        publish_model(registry)
        port = free_port()
        server = start_ours(registry, port, work, haproxy=True, niceness=0)
        url = f"http://127.0.0.1:{port}{PATH}"
        try:
            wait_ready(url, *requests_["json"])
            answers = {name: post(url, body, headers) for name, (body, headers) in requests_.items()}
            np.testing.assert_allclose(answers["binary"], answers["json"], rtol=1e-6, atol=1e-7)
            assert answers["binary"].shape == (ROWS, 10)
            print("answers: binary == json", flush=True)
            for name, (body, headers) in requests_.items():  # warm-up
                run_wrk(url, name, body, headers, 3, work)
            names = list(requests_)
            for round_number in range(args.rounds):
                for name in names if round_number % 2 == 0 else names[::-1]:
                    body, headers = requests_[name]
                    r = run_wrk(url, name, body, headers, args.seconds, work)
                    runs[name].append(r)
                    print(f"round {round_number + 1} {name}: {r['rps'] * ROWS:.0f} rows/s "
                          f"({r['rps']:.1f} req/s, p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, "
                          f"{r['errors']} errors)", flush=True)
        finally:
            stop(server)
    mean = {name: {key: float(np.mean([r[key] for r in rs])) for key in rs[0]} for name, rs in runs.items()}
    print(f"\n{'body':<8} {'rows/s':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name, r in mean.items():
        print(f"{name:<8} {r['rps'] * ROWS:>9.0f} {r['rps']:>8.1f} {r['p50']:>8.1f} {r['p99']:>8.1f} "
              f"{sum(x['errors'] for x in runs[name]):>7d}")
    if any(x["errors"] for rs in runs.values() for x in rs):
        print("some requests failed: see the errors column", flush=True)
    binary, as_json = mean["binary"]["rps"] * ROWS, mean["json"]["rps"] * ROWS
    print(f"RESULT binary_rows_per_s={binary:.0f} json_rows_per_s={as_json:.0f} "
          f"binary_over_json={binary / as_json:.2f}")


if __name__ == "__main__":
    main()
