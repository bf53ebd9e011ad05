"""Serving throughput against the real competition, side by side in one run on the same model and
load: our Serve app as `make demo` ships it (configs/serve/digits.yaml: the model hosted in the
ingress, one replica, on a Ray started with Serve's HAProxy direct ingress,
RAY_SERVE_ENABLE_DIRECT_INGRESS=1 RAY_SERVE_ENABLE_HA_PROXY=1, and RAY_worker_niceness=0) against
  * baseline: the naive server, one FastAPI + uvicorn process, eager model call, stdlib json;
  * tuned_fastapi: the careful one (bench/peers/tuned_fastapi.py): uvicorn --workers 2 (one per
    core), uvloop/httptools, orjson, the model as one tf.function with an input signature traced at
    start, one TF intra/inter-op thread per worker;
  * kserve: KServe's model server (bench/peers/kserve_digits.py): a custom kserve.Model calling the
    same traced tf.function, --workers 2, bound to 127.0.0.1, per-request logging off, in its own
    virtual environment (made on first use under ~/.cache/maas-bench/kserve-venv: kserve pins
    python-dateutil and protobuf apart from this project).
Load: `wrk` (apt-get install wrk) -t2 -c32, single-row then 64-row TF Serving REST `:predict`
requests; rounds in alternating order; every server's predictions are checked against the model's
own output (tf_keras, called here) before it is timed.

    .venv/bin/python bench/serve_load.py [--seconds 15] [--rounds 2] [--python-proxy]
                                         [--no-kserve] [--no-tuned] [--no-baseline]
                                         [--deployment-hosting] [--audit] [--capture]
                                         [--capture-sustained] [--capture-compaction MODE]
                                         [--capture-spool memory|disk] [--capture-no-reuse]

`--python-proxy` starts Ray without the HAProxy variables: Serve's Python proxy (`--haproxy`, the
default now, is accepted and changes nothing). `--audit` adds the same app writing every prediction
to the audit trail (audit_sample_rate: 1.0; the shipped default samples 1%): the audit trail's cost.
`--capture` adds the same app capturing every request for retraining (the model's settings
`capture: {rate: 1.0}`; the shipped config captures none): captured traffic's cost (goal <= 5%).
The replica spools; its compactor waits for a lull to write the Parquet, so after each capturing
server's load the bench waits for the spool to drain and prints how much the load left and how long
and how much CPU turning it into Parquet took. `--capture-sustained` adds the same app with
`compact_idle_pct: 0` (compacting during the load: the cost once saturation outlasts the spool);
`--capture-compaction inline|external` measures the other modes; `--capture-spool disk` the spool
on disk instead of in memory (capture.spool); `--capture-no-reuse` the same app with
`spool_reuse_mb: 0` beside it (every spool write into new memory, as before spool reuse).
`--deployment-hosting` adds the same config with the model in a deployment of its own (hosting:
deployment, one more Serve hop). The ceiling (the same stacks answering without a model) is
bench/serve_ceiling.py.

Last line: RESULT rps=.. rows_per_s=.. p99_ms=.. best_peer_rps=.. best_peer_rows=.. rps_vs_best=..
rows_vs_best=.. (ours against the best peer on each measure: single-row req/s, 64-row rows/s),
then the naive baseline's figures and which peer was best.
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

from maas.localcluster import session_processes  # noqa: E402

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


def run_wrk(url: str, body: str, seconds: int, work: Path, server: int | None = None) -> dict[str, float]:
    """wrk's figures, the machine's CPU busy fraction, and CPU microseconds per request by process
    kind (``us_*``; ``server``: the process session the bench started the server in)."""
    import resource

    script = work / "post.lua"
    script.write_text(LUA.format(body=body))
    cpu_before, procs_before = _cpu_times(), process_jiffies(server)
    wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=True)
    wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    procs_after, cpu_after = process_jiffies(server), _cpu_times()
    out = out.stdout + out.stderr
    if "unexpected symbol" in out or not re.search(r"Requests/sec", out):
        raise RuntimeError(f"wrk failed:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = max(1, int(re.search(r"(\d+) requests in", out).group(1)))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    busy, total = (after - before for after, before in zip(cpu_after, cpu_before, strict=True))
    per_request = {f"us_{kind}": 0.0 for kind in PROCESS_KINDS} | {"faults_replica": 0.0}
    for pid, (kind, jiffies, faults) in procs_after.items():
        spent, faulted = ((jiffies - procs_before[pid][1], faults - procs_before[pid][2])
                          if pid in procs_before else (jiffies, faults))
        per_request[f"us_{kind}"] += spent * 1e6 / CLOCK_TICKS / requests
        if kind == "replica":
            per_request["faults_replica"] += faulted / requests
    per_request["us_wrk"] = 1e6 * sum(getattr(wrk_after, f) - getattr(wrk_before, f)
                                      for f in ("ru_utime", "ru_stime")) / requests
    return {"rps": rps, "p50": _latency(out, "50%"), "p99": _latency(out, "99%"),
            "errors": int(non2xx.group(1)) if non2xx else 0, "cpu_busy": busy / max(total, 1),
            **per_request}


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROCESS_KINDS = ("wrk", "haproxy", "replica", "ray", "server", "other")


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine (/proc/stat): how saturated the cores were while
    wrk ran (servers, wrk and anything else on the machine together)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def process_jiffies(server_session: int | None) -> dict[int, tuple[str, int, int]]:
    """CPU time (user + system, all threads) and minor page faults of every process on the
    machine, with its kind:
    HAProxy, a Serve replica, the rest of Ray, the server the bench started (its session), other.
    wrk is counted apart (getrusage of the bench's reaped children)."""
    found: dict[int, tuple[str, int, int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        session, jiffies = int(fields[3]), int(fields[11]) + int(fields[12])
        if cmdline.startswith(b"ray::ServeReplica"):
            kind = "replica"
        elif name.startswith("haproxy"):
            kind = "haproxy"
        elif (cmdline.startswith(b"ray::") or name in ("raylet", "gcs_server")
              or b"/ray/" in cmdline or b"ray.util.client" in cmdline):
            kind = "ray"
        elif server_session is not None and session == server_session:
            kind = "server"
        elif name == "wrk":
            continue
        else:
            kind = "other"
        found[int(stat.parent.name)] = (kind, jiffies, int(fields[7]))
    return found


def _latency(out: str, percentile: str) -> float:
    value, unit = re.search(rf"{percentile}\s+([\d.]+)(us|ms|s)", out).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def publish_model(root: str) -> str:
    """Register the untrained digits MLP the benches serve; returns its model.keras path."""
    from maas.faults import publish_untrained_digits

    return f"{publish_untrained_digits(root)}/model.keras"


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


def capture_everything(config: dict[str, Any], compaction: str = "process",
                       idle_pct: float | None = None, spool: str = "memory",
                       reuse_mb: int | None = None) -> dict[str, Any]:
    """Every request of every ingress-hosted model captured (spooled, then Parquet under the
    registry by the compaction named; ``idle_pct``: the compactor's compact_idle_pct, 0: at once;
    ``reuse_mb``: spool_reuse_mb, the shipped default if None)."""
    ingress = next(d for d in config["applications"][0]["deployments"] if d["name"] == "Ingress")
    for settings in ingress["user_config"]["models"].values():
        settings["capture"] = {"rate": 1.0, "compaction": compaction, "spool": spool,
                               **({"compact_idle_pct": idle_pct} if idle_pct is not None else {}),
                               **({"spool_reuse_mb": reuse_mb} if reuse_mb is not None else {})}
    return config


def capture_drain(registry: str, drains: list[dict[str, float]], medium: str = "memory",
                  limit_s: float = 300) -> Callable[[], None]:
    """After a capturing server's load: what it left in the spool, and how long its compactor (which
    waits for a lull while the machine serves flat out) took to turn it into Parquet once the load
    stopped; its CPU time per row. Appended to ``drains``."""
    from maas.capture_compactor import status
    from maas.capture_spool import spool_bytes, spool_files, spool_place

    spool = spool_place(registry, "digits_mlp", medium, 2048 << 20).directory  # as the replica puts it

    def after() -> None:
        backlog, started = spool_bytes(spool), time.monotonic()
        while spool_files(spool) and time.monotonic() - started < limit_s:
            time.sleep(0.25)
        report = status(spool) or {}
        drains.append({"backlog_mb": backlog / 2**20, "drain_s": time.monotonic() - started,
                       "left_files": len(spool_files(spool)), "rows": report.get("rows", 0),
                       "cpu_s": report.get("cpu_s", 0.0)})
    return after


def start_ours(root: str, port: int, work: Path, haproxy: bool, niceness: int,
               edit: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
               extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """``serve run`` of configs/serve/digits.yaml (changed by ``edit`` if given) on a Ray of its own
    (``extra_env``: more variables for it, and so for the Ray it starts)."""
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
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_worker_niceness": str(niceness),
           **(extra_env or {})}
    if haproxy:
        env.update(RAY_SERVE_ENABLE_DIRECT_INGRESS="1", RAY_SERVE_ENABLE_HA_PROXY="1")
    # --address local: a Ray of its own, never one whose address a previous `ray start` left behind
    return subprocess.Popen([str(Path(sys.executable).parent / "serve"), "run", "--address", "local",
                             str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=ctrl_c_stops)


def ctrl_c_stops() -> None:
    """In the child: SIGINT back to its default. A bench started in the background by a shell
    (`cmd &`) inherits SIGINT ignored, and so would `serve run`: stop() then waited its 120 s and
    SIGKILLed it, which left Serve's HAProxy running on ports 9101/8404, and the next HAProxy
    Serve on this machine failed to start."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


PEERS = REPO / "bench" / "peers"
KSERVE_VENV = Path.home() / ".cache" / "maas-bench" / "kserve-venv"
KSERVE_VERSION = "0.21.0"
# KServe's own per-request lines (latency trace, uvicorn access log) off, as our config turns off
# Serve's access log: logging costs every server throughput.
KSERVE_QUIET_LOGGING = {
    "version": 1, "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}},
    "loggers": {name: {"handlers": ["stderr"], "level": "WARNING", "propagate": False}
                for name in ("kserve", "kserve.trace", "uvicorn", "uvicorn.error", "uvicorn.access")},
}


def stop(server: subprocess.Popen) -> None:
    """SIGINT to the process group the bench started (the server and its workers), then SIGKILL;
    then SIGKILL to anything left in the session it was started in: Serve's HAProxy runs in a
    process group of its own, and left behind it holds ports 9101/8404 that the next HAProxy
    Serve needs."""
    try:
        os.killpg(server.pid, 2)
        server.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, 9)
        server.wait(timeout=30)
    except ProcessLookupError:
        pass
    for pid in session_processes(server.pid):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def measure(start: Any, one: str, many: str, seconds: int, work: Path,
            check: Callable[[str], None] | None = None,
            after: Callable[[], None] | None = None) -> dict[str, dict[str, float]]:
    """``start(port)`` a server, ``check(url)`` its answers if given, warm it up, then time it on
    ``one`` and ``many`` with wrk, then ``after()`` if given; always stops it."""
    port = free_port()
    server = start(port)
    url = f"http://127.0.0.1:{port}/v1/models/digits_mlp:predict"
    try:
        wait_ready(url, one)
        if check is not None:
            check(url)
        run_wrk(url, one, 3, work)  # warm-up
        timed = {"one": run_wrk(url, one, seconds, work, server.pid),
                 "many": run_wrk(url, many, seconds, work, server.pid)}
        if after is not None:
            after()
        return timed
    finally:
        stop(server)


def _mean(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {size: {key: float(np.mean([r[size][key] for r in rounds])) for key in rounds[0][size]}
            for size in rounds[0]}


def _quiet(log: Path) -> dict[str, Any]:
    return {"stdout": subprocess.DEVNULL, "stderr": log.open("ab"), "start_new_session": True,
            "preexec_fn": ctrl_c_stops}


def start_baseline(model_file: str, port: int, work: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", BASELINE, model_file, str(port)],
                            **_quiet(work / "baseline.log"))


def start_uvicorn(factory: str, port: int, work: Path, model_file: str = "",
                  workers: int = 2) -> subprocess.Popen:
    """``uvicorn bench/peers/tuned_fastapi.py:<factory> --workers 2``, as a careful user runs it."""
    env = {**os.environ, "MAAS_BENCH_MODEL": model_file, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(PEERS), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", f"tuned_fastapi:{factory}", "--factory", "--app-dir", str(PEERS),
         "--workers", str(workers), "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop",
         "--http", "httptools", "--no-access-log", "--log-level", "warning"],
        env=env, **_quiet(work / f"{factory}.log"))


def _pinned(name: str) -> str:
    """``name==version`` as constraints.txt pins it, so the peers run our TensorFlow."""
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if re.match(rf"{re.escape(name)}\s*==", line.strip(), flags=re.IGNORECASE):
            return line.split("#")[0].strip()
    return name


def kserve_python() -> Path:
    """KServe's own virtual environment (made once, ~2 min): kserve plus our TensorFlow and tf_keras.
    Never .venv: kserve pins python-dateutil<3 and resolves protobuf 6.x, unlike this project."""
    python = KSERVE_VENV / "bin" / "python"
    probe = [str(python), "-c", "import kserve, tf_keras, tensorflow"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"making KServe's virtual environment at {KSERVE_VENV} ...", flush=True)
    base = getattr(sys, "_base_executable", None) or sys.executable
    subprocess.run([base, "-m", "venv", "--clear", str(KSERVE_VENV)], check=True)
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", f"kserve=={KSERVE_VERSION}",
                              _pinned("tensorflow"), _pinned("tf_keras"), "orjson"],
                             capture_output=True, text=True)
    if install.returncode != 0 or subprocess.run(probe, capture_output=True).returncode != 0:
        raise RuntimeError("pip could not install kserve into its own venv:\n" + install.stderr[-3000:])
    return python


def start_kserve(python: Path, model_file: str, port: int, work: Path) -> subprocess.Popen:
    log_config = work / "kserve-logging.json"
    log_config.write_text(json.dumps(KSERVE_QUIET_LOGGING))
    return subprocess.Popen(
        [str(python), str(PEERS / "kserve_digits.py"), "--model_path", model_file, "--model_name",
         "digits_mlp", "--http_port", str(port), "--workers", "2", "--enable_grpc", "false",
         "--enable_latency_logging", "false", "--log_config_file", str(log_config)],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, **_quiet(work / "kserve.log"))


def answers_match(expected: dict[str, np.ndarray], bodies: dict[str, str], atol: float = 1e-5):
    """A ``check`` for ``measure``: the server's predictions for each body equal ``expected``."""
    import requests

    def check(url: str) -> None:
        for size, body in bodies.items():
            reply = requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=30)
            reply.raise_for_status()
            got = np.asarray(reply.json()["predictions"], dtype=np.float32)
            if got.shape != expected[size].shape or not np.allclose(got, expected[size], atol=atol):
                worst = (float(np.abs(got - expected[size]).max()) if got.shape == expected[size].shape
                         else f"shape {got.shape} != {expected[size].shape}")
                raise AssertionError(f"{url}: {size}-row predictions differ from the model's ({worst})")
    return check


def model_outputs(model_file: str, bodies: dict[str, str]) -> dict[str, np.ndarray]:
    """The model's own answers (tf_keras, eager call) to each body's rows."""
    from maas.tfkeras import load_model

    model = load_model(model_file, compile=False)
    return {size: np.asarray(model(np.asarray(json.loads(body)["instances"], dtype=np.float32),
                                    training=False)) for size, body in bodies.items()}


def request_bodies() -> dict[str, str]:
    return {"one": json.dumps({"instances": [np.random.rand(8, 8).round(3).tolist()]}),
            "many": json.dumps({"instances": np.random.rand(64, 8, 8).round(3).tolist()})}


def run_rounds(starters: dict[str, Callable[[int], subprocess.Popen]], checks: dict[str, Any],
               bodies: dict[str, str], seconds: int, rounds: int, work: Path,
               per_round: dict[str, list[dict[str, dict[str, float]]]] | None = None,
               afters: dict[str, Callable[[], None]] | None = None,
               ) -> dict[str, dict[str, dict[str, float]]]:
    """Each server ``rounds`` times, in alternating order (this VM's speed drifts by tens of percent
    between minutes; a ratio of measurements taken side by side is what we trust); the mean.
    ``per_round``, if given, gets every round's figures by server."""
    names = list(starters)
    runs: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in names}
    if per_round is not None:
        per_round.update(runs)  # the same lists, filled below
    for round_number in range(rounds):
        for name in names if round_number % 2 == 0 else names[::-1]:
            runs[name].append(measure(starters[name], bodies["one"], bodies["many"], seconds, work,
                                      check=checks.get(name), after=(afters or {}).get(name)))
            r = runs[name][-1]
            print(f"round {round_number + 1} {name}: {r['one']['rps']:.0f} req/s 1-row, "
                  f"{r['many']['rps'] * 64:.0f} rows/s 64-row", flush=True)
    return {name: _mean(r) for name, r in runs.items()}


def _paired(runs: dict[str, list[dict[str, dict[str, float]]]], name: str, size: str,
            against: str = "ours") -> list[float]:
    return [a[size]["rps"] / b[size]["rps"] for a, b in zip(runs[name], runs[against], strict=True)]


def paired_ratios(runs: dict[str, list[dict[str, dict[str, float]]]], name: str, size: str,
                  against: str = "ours") -> str:
    """``name``'s throughput over ``against``'s, round by round (each round measures both side by
    side, so drift between rounds cancels): the median and the spread, then every round's."""
    ratios = _paired(runs, name, size, against)
    return (f"median {float(np.median(ratios)):.3f}x (min {min(ratios):.3f}, max {max(ratios):.3f}; "
            f"rounds: {', '.join(f'{r:.3f}' for r in ratios)})")


def print_table(results: dict[str, dict[str, dict[str, float]]], width: int = 16) -> None:
    print(f"\n{'server':<{width}} {'1-row req/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'64-row req/s':>13} "
          f"{'rows/s':>9} {'p99 ms':>8} {'errors':>7} {'CPU busy':>9}")
    for name, r in results.items():
        print(f"{name:<{width}} {r['one']['rps']:>12.0f} {r['one']['p50']:>8.1f} {r['one']['p99']:>8.1f} "
              f"{r['many']['rps']:>13.1f} {r['many']['rps'] * 64:>9.0f} {r['many']['p99']:>8.1f} "
              f"{r['one']['errors'] + r['many']['errors']:>7.0f} "
              f"{r['one']['cpu_busy']:>4.0%}/{r['many']['cpu_busy']:<4.0%}")
    print("(CPU busy: the whole machine's, both cores, while wrk ran: 1-row/64-row)")
    print_cpu(results, width)


def print_cpu(results: dict[str, dict[str, dict[str, float]]], width: int = 16) -> None:
    """CPU microseconds per request by process kind (replica: the Serve replica, here the Ingress
    hosting the model; server: a peer's processes, or `serve run`'s own; ray: the rest of Ray)."""
    for size, label in (("one", "single-row"), ("many", "64-row")):
        print(f"\nCPU us per request, {label}")
        print(f"{'server':<{width}} " + " ".join(f"{k:>8}" for k in PROCESS_KINDS) + f" {'total':>8}"
              + "  replica page faults")
        for name, r in results.items():
            values = [r[size][f"us_{kind}"] for kind in PROCESS_KINDS]
            print(f"{name:<{width}} " + " ".join(f"{v:>8.0f}" for v in values) + f" {sum(values):>8.0f}"
                  + f"  {r[size].get('faults_replica', 0.0):>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=2, help="measurements per server (averaged)")
    parser.add_argument("--python-proxy", action="store_true",
                        help="Serve's Python proxy instead of the HAProxy direct ingress we ship")
    parser.add_argument("--haproxy", action="store_true", help="the default; accepted, changes nothing")
    parser.add_argument("--worker-niceness", type=int, default=0,
                        help="nice value of Ray's workers (Ray's own default: 15; we ship 0)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the naive FastAPI server")
    parser.add_argument("--no-tuned", action="store_true", help="skip the tuned FastAPI server")
    parser.add_argument("--no-kserve", action="store_true", help="skip KServe's model server")
    parser.add_argument("--deployment-hosting", action="store_true",
                        help="also measure the model in a deployment of its own (hosting: deployment)")
    parser.add_argument("--audit", action="store_true",
                        help="also measure the app writing every prediction to the audit trail")
    parser.add_argument("--capture", action="store_true",
                        help="also measure the app capturing every request for retraining (rate 1.0)")
    parser.add_argument("--capture-sustained", action="store_true",
                        help="with --capture: also the same with compact_idle_pct 0, the compactor working "
                             "during the load (what saturation that outlasts the spool costs)")
    parser.add_argument("--capture-no-reuse", action="store_true",
                        help="with --capture: also the same with capture.spool_reuse_mb 0 (every spool "
                             "write into new memory, as before spool reuse)")
    parser.add_argument("--capture-compaction", choices=["process", "inline", "external"], default="process",
                        help="who writes the captured Parquet (capture.compaction; process: as shipped)")
    parser.add_argument("--capture-spool", choices=["memory", "disk"], default="memory",
                        help="where the capture spool waits for the compactor (capture.spool; memory: as "
                             "shipped)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install wrk")
    haproxy = not args.python_proxy
    print(f"ours: Serve with {'HAProxy direct ingress' if haproxy else 'the Python proxy'}, "
          f"RAY_worker_niceness={args.worker_niceness}", flush=True)
    bodies = request_bodies()
    kserve_problem = None
    kserve = None
    if not args.no_kserve:
        try:
            kserve = kserve_python()
        except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
            kserve_problem = str(exc)
            print(f"KServe not measured: {exc}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        registry = f"{tmp}/registry"
        model_file = publish_model(registry)
        expected = model_outputs(model_file, bodies)
        niceness = args.worker_niceness
        starters: dict[str, Callable[[int], subprocess.Popen]] = {
            "ours": lambda p: start_ours(registry, p, work, haproxy, niceness)}
        if not args.no_baseline:
            starters["baseline"] = lambda p: start_baseline(model_file, p, work)
        if not args.no_tuned:
            starters["tuned_fastapi"] = lambda p: start_uvicorn("create_app", p, work, model_file)
        if kserve is not None:
            starters["kserve"] = lambda p: start_kserve(kserve, model_file, p, work)
        if args.deployment_hosting:
            starters["ours_deployment"] = lambda p: start_ours(registry, p, work, haproxy, niceness,
                                                               edit=as_deployment_hosting)
        if args.audit:
            starters["ours_audit_all"] = lambda p: start_ours(registry, p, work, haproxy, niceness,
                                                              edit=audit_everything)
        if args.capture:
            starters["ours_capture_all"] = lambda p: start_ours(registry, p, work, haproxy, niceness,
                                                                edit=lambda c: capture_everything(
                                                                    c, args.capture_compaction,
                                                                    spool=args.capture_spool))
        if args.capture and args.capture_no_reuse:
            starters["ours_capture_noreuse"] = lambda p: start_ours(registry, p, work, haproxy, niceness,
                                                                    edit=lambda c: capture_everything(
                                                                        c, args.capture_compaction,
                                                                        spool=args.capture_spool,
                                                                        reuse_mb=0))
        if args.capture and args.capture_sustained:
            starters["ours_capture_busy"] = lambda p: start_ours(registry, p, work, haproxy, niceness,
                                                                 edit=lambda c: capture_everything(
                                                                     c, args.capture_compaction, 0,
                                                                     args.capture_spool))
        check = answers_match(expected, bodies)
        runs: dict[str, list[dict[str, dict[str, float]]]] = {}
        drains: list[dict[str, float]] = []
        afters = ({"ours_capture_all": capture_drain(registry, drains, args.capture_spool)}
                  if args.capture else {})
        results = run_rounds(starters, {name: check for name in starters}, bodies, args.seconds,
                             args.rounds, work, per_round=runs, afters=afters)
    print_table(results)
    if kserve_problem:
        print(f"kserve: not measured: {kserve_problem}")
    ours = results["ours"]
    if args.audit:
        audited = results["ours_audit_all"]
        print(f"audit at 100%: {audited['one']['rps'] / ours['one']['rps']:.3f}x single-row req/s, "
              f"{audited['many']['rps'] / ours['many']['rps']:.3f}x 64-row req/s of the shipped 1% sampling")
        print(f"  audit, single-row, round by round: {paired_ratios(runs, 'ours_audit_all', 'one')}")
        print(f"  audit, 64-row, round by round: {paired_ratios(runs, 'ours_audit_all', 'many')}")
    if args.capture:
        captured = results["ours_capture_all"]
        print(f"capture at 100%: {captured['one']['rps'] / ours['one']['rps']:.3f}x single-row req/s, "
              f"{captured['many']['rps'] / ours['many']['rps']:.3f}x 64-row req/s of no capture "
              f"(goal >= 0.95)")
        print(f"  capture, single-row, round by round: {paired_ratios(runs, 'ours_capture_all', 'one')}")
        print(f"  capture, 64-row, round by round: {paired_ratios(runs, 'ours_capture_all', 'many')}")
        if args.capture_no_reuse:
            print(f"  without spool reuse (spool_reuse_mb 0: new memory for every write): "
                  f"{paired_ratios(runs, 'ours_capture_noreuse', 'one')} single-row; "
                  f"{paired_ratios(runs, 'ours_capture_noreuse', 'many')} 64-row")
        if args.capture_sustained:
            print(f"capture at 100%, compacting during the load: "
                  f"{paired_ratios(runs, 'ours_capture_busy', 'one')} single-row; "
                  f"{paired_ratios(runs, 'ours_capture_busy', 'many')} 64-row")
        for number, drain in enumerate(drains, start=1):
            print(f"  capture round {number}: {drain['backlog_mb']:.0f} MiB spooled during the load, "
                  f"turned into Parquet {drain['drain_s']:.1f} s after it ({drain['left_files']} spool "
                  f"files left); the compactor wrote {drain['rows']} rows in {drain['cpu_s']:.1f} CPU s "
                  f"({1e6 * drain['cpu_s'] / max(1, drain['rows']):.1f} us a row)")
    peers = {name: r for name, r in results.items() if name in ("baseline", "tuned_fastapi", "kserve")}
    line = (f"RESULT rps={ours['one']['rps']:.0f} rows_per_s={ours['many']['rps'] * 64:.0f} "
            f"p99_ms={ours['one']['p99']:.1f}")
    if peers:
        best_rps = max(peers, key=lambda n: peers[n]["one"]["rps"])
        best_rows = max(peers, key=lambda n: peers[n]["many"]["rps"])
        line += (f" best_peer_rps={peers[best_rps]['one']['rps']:.0f}"
                 f" best_peer_rows={peers[best_rows]['many']['rps'] * 64:.0f}"
                 f" rps_vs_best={ours['one']['rps'] / peers[best_rps]['one']['rps']:.2f}"
                 f" rows_vs_best={ours['many']['rps'] / peers[best_rows]['many']['rps']:.2f}"
                 f" best_rps_peer={best_rps} best_rows_peer={best_rows}")
    if "baseline" in results:
        base = results["baseline"]
        line += (f" base_rps={base['one']['rps']:.0f} base_rows_per_s={base['many']['rps'] * 64:.0f}"
                 f" rps_vs_base={ours['one']['rps'] / base['one']['rps']:.2f}"
                 f" rows_vs_base={ours['many']['rps'] / base['many']['rps']:.2f}")
    if args.audit:
        line += (f" audit_rps_ratio={results['ours_audit_all']['one']['rps'] / ours['one']['rps']:.3f}"
                 f" audit_rows_ratio={results['ours_audit_all']['many']['rps'] / ours['many']['rps']:.3f}"
                 f" audit_rps_median={np.median(_paired(runs, 'ours_audit_all', 'one')):.3f}"
                 f" audit_rows_median={np.median(_paired(runs, 'ours_audit_all', 'many')):.3f}")
    if args.capture:
        captured = results["ours_capture_all"]
        line += (f" capture_rps_ratio={captured['one']['rps'] / ours['one']['rps']:.3f}"
                 f" capture_rows_ratio={captured['many']['rps'] / ours['many']['rps']:.3f}"
                 f" capture_rps_median={np.median(_paired(runs, 'ours_capture_all', 'one')):.3f}"
                 f" capture_rows_median={np.median(_paired(runs, 'ours_capture_all', 'many')):.3f}")
        if args.capture_sustained:
            line += (f" capture_busy_rps_median={np.median(_paired(runs, 'ours_capture_busy', 'one')):.3f}"
                     f" capture_busy_rows_median={np.median(_paired(runs, 'ours_capture_busy', 'many')):.3f}")
    print(line)


if __name__ == "__main__":
    main()
