"""Training under real faults (issue 15, items 2 and 3) on a three-node cluster on this machine
(maas.localcluster: a head with no CPUs, two 1-CPU worker nodes, so each of the run's two
workers lands on its own node):

  * a worker node SIGKILLed whole mid-run (its raylet and every process on it); a replacement
    node joins; the run goes on from its last checkpoint, trains every epoch exactly once, and
    registers a model within 1 point of an undisturbed run with the same seed. We test "a node
    comes back", not "the run shrinks": a run's workers, its data shards and its global batch
    (batch_size x num_workers, with the learning rate scaled to it) are fixed for the whole run,
    so changing the worker count mid-run would change the optimisation it promised;
  * the job's driver SIGKILLed mid-run: `ray job status` says FAILED, nothing is registered, and
    the same job submitted again with --resume continues from the last checkpoint.

Minutes each: `make chaos` runs them (marked ``slow``, so `make test` does not).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from maas.faults import kill_node_of_rank, progress, registered_epochs, train_arguments, train_job
from maas.localcluster import LocalCluster, command_line, local_cluster
from maas.registry import Registry
from tests.conftest import REPO

pytestmark = [pytest.mark.chaos, pytest.mark.slow]
EPOCHS = 8
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("chaos-train"), workers=2, worker_cpus=1,
                       haproxy=False) as running:
        yield running


def test_a_killed_worker_node_and_its_replacement(cluster: LocalCluster) -> None:
    calm = train_job(cluster, "calm", "digits_calm", EPOCHS)
    out, _ = calm.communicate(timeout=600)
    assert calm.returncode == 0, out[-3000:]

    disturbed = train_job(cluster, "node-loss", "digits_node_loss", EPOCHS)
    killed = kill_node_of_rank(cluster, "node-loss", rank=1, epoch=3)
    assert killed["node"] != "head"
    time.sleep(5)  # the run is without that node for a while, as after a real machine loss
    cluster.add_worker(killed["node"], num_cpus=1)
    out, _ = disturbed.communicate(timeout=600)
    assert disturbed.returncode == 0, out[-3000:]

    registry = Registry(cluster.env["MAAS_REGISTRY"])
    calm_version, lost = registry.get("digits_calm"), registry.get("digits_node_loss")
    assert registered_epochs(lost) == list(range(1, EPOCHS + 1))  # no gap, no repeat
    by_pid: dict[int, list[int]] = {}
    for line in progress(cluster, "node-loss", 1):
        by_pid.setdefault(line["pid"], []).append(line["epoch"])
    assert killed["pid"] in by_pid and len(by_pid) == 2, "rank 1 was not restarted on the new node"
    after = next(epochs for pid, epochs in by_pid.items() if pid != killed["pid"])
    assert after[0] > 1 and after == list(range(after[0], EPOCHS + 1)), "not resumed from a checkpoint"
    assert after[0] <= killed["epoch"] + 1, "epochs were skipped"
    gap = abs(lost.metadata["metrics"]["test_accuracy"] - calm_version.metadata["metrics"]["test_accuracy"])
    assert gap <= 0.01, (lost.metadata["metrics"], calm_version.metadata["metrics"])


def test_a_killed_job_driver_fails_the_job_and_resume_continues(cluster: LocalCluster) -> None:
    env = {**cluster.env, "RAY_ADDRESS": cluster.dashboard}
    runtime_env = json.dumps({"env_vars": {k: cluster.env[k] for k in ("MAAS_REGISTRY", "MAAS_STORAGE")}})
    command = ["python", "-m", "train",
               *train_arguments(cluster, "driver-loss", "digits_driver_loss", EPOCHS)]

    def submit(*extra: str) -> str:
        done = subprocess.run([str(BIN / "ray"), "job", "submit", "--no-wait", "--working-dir", ".",
                               "--runtime-env-json", runtime_env, "--", *command, *extra],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return re.search(r"'(raysubmit_\w+)'", done.stdout).group(1)

    def status(job: str) -> str:
        """FAILED, SUCCEEDED, RUNNING, ... as `ray job status` reports it."""
        done = subprocess.run([str(BIN / "ray"), "job", "status", job], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60)
        said = (done.stdout + done.stderr).lower()
        for state in ("failed", "succeeded", "stopped"):
            if f"job '{job.lower()}' {state}" in said:
                return state.upper()
        return said[-300:]

    first = submit()
    deadline = time.time() + 300
    while time.time() < deadline and not any(line["epoch"] >= 3
                                             for line in progress(cluster, "driver-loss", 0)):
        time.sleep(0.1)
    driver = _driver_pid(cluster, "driver-loss")
    os.kill(driver, signal.SIGKILL)
    deadline = time.time() + 120
    while time.time() < deadline and status(first) != "FAILED":
        time.sleep(1)
    assert status(first) == "FAILED", status(first)
    registry = Registry(cluster.env["MAAS_REGISTRY"])
    assert registry.versions("digits_driver_loss") == [], "a killed run registered a model"
    killed_pids = {line["pid"] for line in progress(cluster, "driver-loss", 0)}

    second = submit("--resume")
    deadline = time.time() + 600
    while time.time() < deadline and (state := status(second)) != "SUCCEEDED":
        assert state != "FAILED", subprocess.run([str(BIN / "ray"), "job", "logs", second], cwd=REPO,
                                                 env=env, capture_output=True, text=True).stdout[-3000:]
        time.sleep(2)
    assert status(second) == "SUCCEEDED"
    version = registry.get("digits_driver_loss")
    assert registered_epochs(version) == list(range(1, EPOCHS + 1))
    resumed = [line["epoch"] for line in progress(cluster, "driver-loss", 0)
               if line["pid"] not in killed_pids]
    assert resumed and resumed[0] > 1, "the resumed run started over"
    assert resumed == list(range(resumed[0], EPOCHS + 1)), resumed


def _driver_pid(cluster: LocalCluster, run: str) -> int:
    """The job's driver: the `python -m train ... --run-name run` process (Ray's job supervisor
    starts it in a session of its own)."""
    for stat in Path("/proc").glob("[0-9]*/cmdline"):
        pid = int(stat.parent.name)
        command = command_line(pid)
        if "train" in command and run in command and "-m" in command:
            return pid
    raise AssertionError(f"no driver process for run {run}")
