"""The way a user runs training: `ray start --head`, then `ray job submit --working-dir .`."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A token-authenticated head node on free ports; SIGTERM to `ray start --block` stops
    exactly its processes (never a broad `ray stop`)."""
    work = tmp_path_factory.mktemp("e2e")
    dashboard = free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "MAAS_REGISTRY": str(work / "registry"),
        "MAAS_STORAGE": str(work / "runs"),
        "RAY_ADDRESS": f"http://127.0.0.1:{dashboard}",
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    command = [
        str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=2",
        f"--port={free_port()}", f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
        f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
        f"--metrics-export-port={free_port()}", "--include-dashboard=true",
        "--min-worker-port=20000", "--max-worker-port=20999",  # below the ephemeral range
    ]
    log = open(work / "ray.log", "w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        _wait_for_dashboard(env, process)
        yield env
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def _wait_for_dashboard(env: dict[str, str], process: subprocess.Popen) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        assert process.poll() is None, "ray start exited early"
        if _ray(env, "job", "list").returncode == 0:
            return
        time.sleep(1)
    raise TimeoutError("the Ray dashboard did not come up")


def _ray(env: dict[str, str], *args: str, timeout: int = 30) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def _submit(env: dict[str, str], *train_args: str) -> subprocess.CompletedProcess:
    runtime_env = {"env_vars": {k: env[k] for k in ("MAAS_REGISTRY", "MAAS_STORAGE")}}
    return _ray(env, "job", "submit", "--working-dir", ".", "--runtime-env-json",
                json.dumps(runtime_env), "--", "python", "-m", "train", *train_args, timeout=600)


def test_training_job_registers_a_model(head: dict[str, str]) -> None:
    result = _submit(head, "--config", "configs/train/digits_mlp.yaml",
                     "--config", "configs/train/smoke.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[train] epoch 2/2" in result.stdout
    assert "test_accuracy=" in result.stdout
    from maas.registry import Registry

    version = Registry(head["MAAS_REGISTRY"]).get("digits_mlp")
    assert version.version == 1 and version.metadata["config"]["training"]["epochs"] == 2


def test_bad_config_fails_fast_with_the_message_in_the_job_log(head: dict[str, str]) -> None:
    started = time.time()
    result = _submit(head, "--config", "configs/train/digits_mlp.yaml", "--set", "model.type=rnn")
    assert result.returncode != 0
    assert "model.type" in result.stdout + result.stderr
    assert time.time() - started < 120


def test_unauthenticated_clients_are_refused(head: dict[str, str]) -> None:
    reply = requests.get(f"{head['RAY_ADDRESS']}/api/jobs/", timeout=10)
    assert reply.status_code in (401, 403)
    authorised = requests.get(f"{head['RAY_ADDRESS']}/api/jobs/", timeout=10,
                              headers={"Authorization": f"Bearer {head['RAY_AUTH_TOKEN']}"})
    assert authorised.status_code == 200
