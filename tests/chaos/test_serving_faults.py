"""Serving under real faults (issue 15, items 1, 4 and 9), on a real three-node cluster on this
machine (maas.localcluster: a head running Serve's controller and HAProxy, two 1-CPU worker
nodes, token auth, one registry directory for all), with the shipped high-availability config
(configs/serve/ha.yaml: configs/serve/digits.yaml with its two Ingress replicas kept on different
nodes, HAProxy ingress) under steady traffic from 24 concurrent keep-alive clients:

  * one Ingress replica's process SIGKILLed;
  * the Serve controller SIGKILLed;
  * a worker node hosting a replica SIGKILLed whole (raylet, workers, agents), then a
    replacement node joins;
  * a short soak: mixed traffic (single and 64 rows, both protocols, invalid requests), a new
    version registered and swapped in by polling, memory and p99 watched.

Goals (README "Reliability"): < 0.5% failed requests and no stretch over 2 s without a
successful answer for a killed replica or node; nothing failed while the controller is down.
`make test` runs them all (about 3 minutes); bench/chaos.py and bench/soak.py give the figures.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from maas.faults import (
    DeployedApp,
    deploy_shipped_app,
    fault_line,
    kill_controller,
    kill_replica,
    node_hosting_a_replica,
    replicas_on,
    rss_mib,
    run_fault,
    serving_processes,
    single_row_shots,
)
from maas.loadprobe import LoadProbe
from maas.localcluster import LocalCluster, local_cluster
from tests.conftest import REPO

pytestmark = pytest.mark.chaos

CLIENTS = 24
AFTER_S = 15.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    with local_cluster(tmp_path_factory.mktemp("chaos"), workers=2, worker_cpus=1) as running:
        # this process talks to the dashboard (Serve details) as a client of the cluster
        os.environ.update({k: running.env[k] for k in saved})
        try:
            yield running
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture(scope="module")
def app(cluster: LocalCluster) -> DeployedApp:
    deployed = deploy_shipped_app(cluster, path=REPO / "configs/serve/ha.yaml")
    assert deployed.min_replicas == 2
    return deployed


@pytest.fixture
def load(app: DeployedApp) -> Iterator[LoadProbe]:
    with LoadProbe(app.url, single_row_shots(), clients=CLIENTS) as probe:
        probe.wait_answered(100)
        app.wait_replicas(app.min_replicas)
        yield probe


def test_the_cluster_has_three_nodes_and_replicas_on_the_workers(cluster: LocalCluster,
                                                                  app: DeployedApp) -> None:
    names = cluster.node_names()
    assert sorted(names.values()) == ["head", "node1", "node2"]
    hosts = {names[r["node_id"]] for r in app.replicas()}
    assert hosts and "head" not in hosts  # the head has no CPUs: it runs only Serve's control plane


def test_a_killed_replica_costs_almost_no_request(app: DeployedApp, load: LoadProbe) -> None:
    victim: dict = {}
    result = run_fault(load, "replica_killed", lambda: victim.update(kill_replica(app)),
                       lambda: app.wait_replicas(app.min_replicas, gone=frozenset([victim["replica_id"]])),
                       AFTER_S)
    print(fault_line(result))
    assert result["requests"] > 500
    assert result["failed_pct"] < 0.5, result
    assert result["longest_gap_s"] <= 2.0, result
    assert result["recovery_s"] < 60  # a new replica started, imported TensorFlow and loaded the model


def test_a_killed_controller_costs_no_request(cluster: LocalCluster, app: DeployedApp,
                                             load: LoadProbe) -> None:
    before = {r["replica_id"] for r in app.replicas()}

    def restarted() -> float:
        started = time.monotonic()
        deadline = started + 60
        while time.monotonic() < deadline:  # Ray restarts the controller (a detached actor)
            try:
                app.details()
                return time.monotonic() - started
            except Exception:  # noqa: BLE001 - the dashboard answers errors while it is gone
                time.sleep(0.25)
        raise TimeoutError("the Serve controller did not come back")

    result = run_fault(load, "controller_killed", lambda: kill_controller(cluster), restarted, AFTER_S)
    print(fault_line(result))
    assert result["failed"] == 0, result
    assert result["longest_gap_s"] <= 1.0, result
    assert {r["replica_id"] for r in app.replicas()} == before  # the replicas were never touched


def test_a_killed_worker_node_costs_almost_no_request(cluster: LocalCluster, app: DeployedApp,
                                                      load: LoadProbe) -> None:
    victim = node_hosting_a_replica(app)
    lost = replicas_on(app, victim)
    assert len(lost) == 1  # ha.yaml: one replica per node
    joined: dict[str, float] = {}

    def back() -> float:
        started = time.monotonic()
        cluster.add_worker(victim, num_cpus=1)  # the replacement machine (one replica per node)
        joined["s"] = time.monotonic() - started
        app.wait_replicas(app.min_replicas, timeout=120, gone=lost)
        return time.monotonic() - started

    result = run_fault(load, "node_killed", lambda: cluster.kill(victim), back, AFTER_S + 10)
    print(fault_line(result), f"replacement joined in {joined['s']:.1f} s")
    assert result["failed_pct"] < 0.5, result
    assert result["longest_gap_s"] <= 2.0, result
    assert sorted(cluster.node_names().values()) == ["head", "node1", "node2"]


def test_a_short_soak_keeps_memory_latency_and_answers_in_bounds(cluster: LocalCluster,
                                                                  app: DeployedApp) -> None:
    """60 s of mixed traffic with a version swap; loose bounds (a 60-second run cannot show the
    5% memory goal of the 10-minute bench/soak.py), but each one fails on a real leak, a latency
    collapse or an error."""
    from maas.soak import republish, run_soak

    def sample() -> tuple[float, int]:
        pids = serving_processes(cluster)
        return sum(rss_mib(p) for p in pids), len(pids)

    figures = run_soak(app.url, 60, sample, lambda: republish(cluster.env["MAAS_REGISTRY"]),
                       swap_every_s=25, sample_every_s=5, bucket_s=20, warmup_s=20, clients=CLIENTS)
    print({k: v for k, v in figures.items() if k != "memory"})
    assert figures["requests"] > 1000
    assert figures["errors_5xx"] == 0 and figures["failed"] == 0, figures["failures_by_status"]
    assert figures["swaps"], "no version was registered during the soak"
    assert figures["rss_growth_pct"] <= 25.0, figures["memory"]
    assert figures["p99_last_ms"] <= 3 * figures["p99_first_ms"], figures["p99_per_bucket_ms"]
    assert "invalid" in figures["kinds"] and "v1_64" in figures["kinds"]


def test_the_soak_swapped_versions_while_serving(app: DeployedApp) -> None:
    """Polling moved every replica to the newest registered version during the soak."""
    import requests

    from maas.registry import Registry

    newest = Registry(app.config["applications"][0]["args"]["registry_root"]).get("digits_mlp").version
    deadline = time.time() + 30
    while time.time() < deadline:
        served = requests.get(f"{app.url}/v1/models/digits_mlp", timeout=5).json()
        if any(str(v["version"]) == str(newest) for v in served["model_version_status"]):
            return
        time.sleep(1)
    raise AssertionError(f"version {newest} never served: {served}")
