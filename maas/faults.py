"""Breaking a running Serve app for real, and timing how it comes back: the shipped app deployed on
a ``LocalCluster``, one Ingress replica SIGKILLed, the Serve controller SIGKILLed, a whole worker
node SIGKILLed. ``bench/chaos.py``, ``bench/soak.py`` and ``tests/chaos/`` use these; nothing here
runs at import time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maas.errors import ClusterError
from maas.localcluster import BIN, LocalCluster, command_line, free_port, session_processes
from maas.serving.settings import INGRESS

REPO = Path(__file__).resolve().parents[1]
APP = "maas"
SHIPPED_CONFIG = REPO / "configs" / "serve" / "digits.yaml"


def publish_untrained_digits(root: str, name: str = "digits_mlp") -> str:
    """Register an untrained 8x8-digits MLP (the shipped app's model, weights irrelevant to load
    and fault figures); returns the version's directory."""
    import numpy as np

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
        version = Registry(root).publish(name, staged, {"schema": schema.to_dict()})
    return version.uri


def shipped_config(registry_root: str, port: int,
                   edit: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                   path: Path = SHIPPED_CONFIG) -> dict[str, Any]:
    """A config file as shipped (configs/serve/digits.yaml unless ``path``), on ``port`` and
    ``registry_root``; one proxy, on the head (every node on one machine cannot bind the same
    port, and on a real cluster the load balancer in front plays this part)."""
    import yaml

    config = yaml.safe_load(Path(path).read_text())
    config["proxy_location"] = "HeadOnly"
    config["http_options"]["port"] = port
    config["applications"][0]["args"]["registry_root"] = registry_root
    return edit(config) if edit is not None else config


@dataclass
class DeployedApp:
    cluster: LocalCluster
    port: int
    config: dict[str, Any]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def min_replicas(self) -> int:
        ingress = next(d for d in self.config["applications"][0]["deployments"] if d["name"] == INGRESS)
        return int(ingress.get("autoscaling_config", {}).get("min_replicas")
                   or ingress.get("num_replicas", 1))

    def details(self) -> dict[str, Any]:
        from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

        return ServeSubmissionClient(self.cluster.dashboard).get_serve_details()

    def replicas(self, state: str | None = "RUNNING") -> list[dict[str, Any]]:
        app = (self.details().get("applications") or {}).get(APP) or {}
        found = (app.get("deployments") or {}).get(INGRESS, {}).get("replicas") or []
        return [r for r in found if state is None or r.get("state") == state]

    def wait_replicas(self, count: int, timeout: float = 120, gone: frozenset[str] = frozenset()) -> float:
        """Seconds until ``count`` Ingress replicas are RUNNING, each a live process and none of
        them one in ``gone`` (the replicas a fault killed: the controller reports a killed replica
        RUNNING until its health check fails)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            try:
                running = [r for r in self.replicas()
                           if r["replica_id"] not in gone and _alive(r.get("pid"))]
            except Exception:  # noqa: BLE001 - the dashboard can be briefly unreachable mid-fault
                running = []
            if len(running) >= count:
                return time.monotonic() - started
            time.sleep(0.25)
        raise TimeoutError(f"{count} running Ingress replicas not back within {timeout:.0f} s")


def _alive(pid: int | None) -> bool:
    """A running process (a killed one can linger as a zombie until its parent reaps it)."""
    if not pid:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def deploy_shipped_app(cluster: LocalCluster, edit: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                       timeout: float = 240, path: Path = SHIPPED_CONFIG) -> DeployedApp:
    """Publish a model, ``serve deploy`` a shipped config (digits.yaml unless ``path``) onto the
    cluster, wait for every replica; the way an operator deploys it."""
    import yaml

    registry = cluster.env["MAAS_REGISTRY"]
    publish_untrained_digits(registry)
    port = free_port()
    config = shipped_config(registry, port, edit, path)
    path = cluster.work / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    deployed = subprocess.run([str(BIN / "serve"), "deploy", str(path), "--address", cluster.dashboard],
                              env=cluster.env, capture_output=True, text=True, timeout=120, cwd=REPO)
    if deployed.returncode != 0:
        raise ClusterError(f"serve deploy failed: {deployed.stderr[-2000:]}")
    app = DeployedApp(cluster, port, config)
    app.wait_replicas(app.min_replicas, timeout=timeout)
    return app


# --- the faults ------------------------------------------------------------------------------

def kill_replica(app: DeployedApp, on_node: str | None = None) -> dict[str, Any]:
    """SIGKILL one running Ingress replica's process (the one on node id ``on_node`` if given)."""
    running = [r for r in app.replicas() if on_node is None or r.get("node_id") == on_node]
    if not running:
        raise ClusterError("no running Ingress replica to kill")
    victim = running[0]
    os.kill(int(victim["pid"]), signal.SIGKILL)
    return victim


def controller_pid(cluster: LocalCluster) -> int:
    """The Serve controller's process (an actor process of the head node's session)."""
    for pid in session_processes(cluster.nodes["head"].process.pid):
        if " ".join(command_line(pid)).startswith("ray::ServeController"):
            return pid
    raise ClusterError("no Serve controller process found on the head node")


def kill_controller(cluster: LocalCluster) -> int:
    pid = controller_pid(cluster)
    os.kill(pid, signal.SIGKILL)
    return pid


def replicas_on(app: DeployedApp, node: str) -> frozenset[str]:
    """The ids of the running Ingress replicas on node ``node`` (our name for it)."""
    names = app.cluster.node_names()
    return frozenset(r["replica_id"] for r in app.replicas() if names.get(r.get("node_id", "")) == node)


def node_hosting_a_replica(app: DeployedApp) -> str:
    """The name of a worker node that runs an Ingress replica."""
    names = app.cluster.node_names()
    for replica in app.replicas():
        name = names.get(replica.get("node_id", ""))
        if name and name != "head":
            return name
    raise ClusterError(f"no Ingress replica on a worker node ({names})")


# --- one fault under load --------------------------------------------------------------------

def run_fault(probe: Any, case: str, inject: Callable[[], Any], recover: Callable[[], float],
              after_s: float = 20.0) -> dict[str, Any]:
    """Inject a fault while ``probe`` (a running ``maas.loadprobe.LoadProbe``) sends traffic,
    ``recover()`` waits for what should come back and returns how long that took (the
    "back" figure: for a replica, from the fault until the config's replica count runs again),
    then traffic runs on until ``after_s`` past the fault; the figures cover the requests that
    ended in that window."""
    from maas.loadprobe import summary

    start = time.monotonic()
    detail = inject()
    recovery_s = recover()
    time.sleep(max(0.0, start + after_s - time.monotonic()))
    figures = summary(probe.answers, start, time.monotonic())
    return {"case": case, "detail": detail, "recovery_s": round(recovery_s, 2), **figures}


def fault_line(result: dict[str, Any]) -> str:
    return (f"{result['case']:<20} requests={result['requests']:<6} failed={result['failed']:<4} "
            f"({result['failed_pct']:.2f}%) longest_gap_s={result['longest_gap_s']:.2f} "
            f"back_s={result['recovery_s']:.1f} p99_ms={result['p99_ms']:.1f} "
            f"failures={result['failures_by_status']}")


def single_row_shots() -> list[Any]:
    """The shipped app's two protocols, single row: TF Serving REST and Open Inference Protocol."""
    import json

    from maas.loadprobe import Shot

    row = [[0.1] * 8] * 8
    v1 = json.dumps({"instances": [row]}).encode()
    v2 = json.dumps({"inputs": [{"name": "inputs", "shape": [1, 8, 8], "datatype": "FP32",
                                 "data": [0.1] * 64}]}).encode()
    return [Shot("v1", "/v1/models/digits_mlp:predict", v1),
            Shot("v2", "/v2/models/digits_mlp/infer", v2)]


# --- what the serving processes hold ---------------------------------------------------------

SERVING_PROCESSES = ("ray::ServeReplica", "ray::ProxyActor", "ray::HAProxyManager")


def serving_processes(cluster: LocalCluster) -> dict[int, str]:
    """pid -> kind for every Serve replica, proxy and HAProxy process of the cluster's nodes."""
    found = {}
    for node in cluster.nodes.values():
        for pid in session_processes(node.process.pid):
            command = " ".join(command_line(pid))
            program = command.split(" ")[0]
            if command.startswith(SERVING_PROCESSES) or program.endswith("haproxy"):
                found[pid] = program
    return found


def rss_mib(pid: int) -> float:
    """Resident memory of a process in MiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# --- training through a node loss --------------------------------------------------------------

def train_arguments(cluster: LocalCluster, run: str, model: str, epochs: int = 8) -> list[str]:
    """What follows ``python -m train`` for the digits MLP on ``cluster``: two workers (one per
    1-CPU worker node), a checkpoint every epoch, three restarts allowed."""
    settings = [f"training.epochs={epochs}", "model.hidden_units=[32]", "run.max_failures=3",
                "run.checkpoint_every_epochs=1", "scaling.num_workers=2",
                f"registry.model_name={model}", f"registry.root={cluster.env['MAAS_REGISTRY']}",
                f"run.storage_path={cluster.env['MAAS_STORAGE']}"]
    return ["--config", "configs/train/digits_mlp.yaml",
            *[part for s in settings for part in ("--set", s)], "--run-name", run]


def train_job(cluster: LocalCluster, run: str, model: str, epochs: int = 8,
              extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """``python -m train`` (``train_arguments``) as a driver of ``cluster``."""
    return subprocess.Popen(
        [str(BIN / "python"), "-m", "train", *train_arguments(cluster, run, model, epochs),
         "--address", cluster.address, *extra],
        cwd=REPO, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def registered_epochs(version: Any) -> list[int]:
    """The epochs in a registered version's training history, in order."""
    import json

    return [int(h["epoch"]) for h in json.loads((Path(version.uri) / "history.json").read_text())]


def progress(cluster: LocalCluster, run: str, rank: int) -> list[dict[str, Any]]:
    """What rank ``rank`` of a run reported, an epoch a line (pid, epoch, ...)."""
    from maas.training import read_progress

    return read_progress(f"{cluster.env['MAAS_STORAGE']}/{run}", rank)


def node_of(cluster: LocalCluster, pid: int) -> str:
    """Which node of the cluster runs process ``pid``."""
    for name, node in cluster.nodes.items():
        if node.alive and pid in session_processes(node.process.pid):
            return name
    raise ClusterError(f"process {pid} is on no node of the cluster")


def kill_node_of_rank(cluster: LocalCluster, run: str, rank: int, epoch: int,
                      timeout: float = 300) -> dict[str, Any]:
    """Once rank ``rank`` reported epoch ``epoch``, SIGKILL the whole node it runs on; returns
    its last report with the node's name."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = progress(cluster, run, rank)
        if lines and lines[-1]["epoch"] >= epoch:
            killed = {**lines[-1], "node": node_of(cluster, lines[-1]["pid"])}
            cluster.kill(killed["node"])
            return killed
        time.sleep(0.05)
    raise TimeoutError(f"rank {rank} of run {run} never reached epoch {epoch}")
