"""The way a user runs training: `ray start --head`, then `ray job submit --working-dir .`."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO, SteadyLoad, free_port, stop_ray_head

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A token-authenticated head node on free ports; SIGTERM to `ray start --block` stops
    exactly its processes (never a broad `ray stop`)."""
    work = tmp_path_factory.mktemp("e2e")
    dashboard, metrics = free_port(), free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "MAAS_REGISTRY": str(work / "registry"),
        "MAAS_STORAGE": str(work / "runs"),
        "RAY_ADDRESS": f"http://127.0.0.1:{dashboard}",
        "METRICS_URL": f"http://127.0.0.1:{metrics}/metrics",
        "WORK": str(work),
        # as `make demo` and cluster.yaml start Ray: Serve behind its HAProxy ingress
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    gcs_port = free_port()
    command = [
        str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=2",
        f"--port={gcs_port}", f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
        f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
        f"--metrics-export-port={metrics}", "--include-dashboard=true",
        "--min-worker-port=20000", "--max-worker-port=20999",  # below the ephemeral range
    ]
    log = open(work / "ray.log", "w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        _wait_for_dashboard(env, process)
        yield env
    finally:
        stop_ray_head(process, gcs_port)
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


def _runtime_env(env: dict[str, str]) -> str:
    """The README recipe: pass the registry and storage locations as runtime env variables."""
    return json.dumps({"env_vars": {k: env[k] for k in ("MAAS_REGISTRY", "MAAS_STORAGE")}})


def _submit(env: dict[str, str], *train_args: str, module: str = "train") -> subprocess.CompletedProcess:
    return _ray(env, "job", "submit", "--working-dir", ".", "--runtime-env-json", _runtime_env(env),
                "--", "python", "-m", module, *train_args, timeout=600)


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
    submission = {"entrypoint": "echo should-never-run", "submission_id": "intruder"}
    reply = requests.post(f"{head['RAY_ADDRESS']}/api/jobs/", json=submission, timeout=10)
    assert reply.status_code in (401, 403)
    wrong = requests.post(f"{head['RAY_ADDRESS']}/api/jobs/", json=submission, timeout=10,
                          headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code in (401, 403)
    authorised = requests.get(f"{head['RAY_ADDRESS']}/api/jobs/", timeout=10,
                              headers={"Authorization": f"Bearer {head['RAY_AUTH_TOKEN']}"})
    assert authorised.status_code == 200
    assert all(job["submission_id"] != "intruder" for job in authorised.json())


def test_tuning_sweep_as_a_job(head: dict[str, str]) -> None:
    # No early stopping here: a trial Tune stops mid-run can leave its worker group's CPU reserved
    # on a full 2-CPU cluster (see README, Tuning), which would stall the other trial.
    result = _submit(head, "--config", "configs/tune/smoke.yaml", "--set", "search.num_samples=2",
                     "--set", "search.scheduler=none", module="tune")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[tune] best:" in result.stdout
    from maas.registry import Registry

    assert Registry(head["MAAS_REGISTRY"]).get("digits_tuned").metadata["sweep"]["trials"] == 2


def test_follow_and_stop_a_job(head: dict[str, str]) -> None:
    submitted = _ray(head, "job", "submit", "--no-wait", "--submission-id", "long-sweep",
                     "--working-dir", ".", "--runtime-env-json", _runtime_env(head), "--",
                     "python", "-m", "train", "--config", "configs/train/digits_mlp.yaml",
                     "--set", "training.epochs=500", "--set", "registry.model_name=long")
    assert submitted.returncode == 0, submitted.stderr
    deadline = time.time() + 180
    while time.time() < deadline:
        logs = _ray(head, "job", "logs", "long-sweep").stdout
        if "[train] epoch 1/500" in logs:
            break
        time.sleep(2)
    assert "[train] epoch 1/500" in logs
    assert _ray(head, "job", "stop", "long-sweep", timeout=120).returncode == 0
    status = _ray(head, "job", "status", "long-sweep")
    assert "stopped" in (status.stdout + status.stderr).lower()


def test_deploy_as_a_job_then_metrics_reach_prometheus(head: dict[str, str]) -> None:
    """`serve deploy` from a job, real traffic, then our metric names on the node's scrape port."""
    from pathlib import Path

    import yaml

    config = yaml.safe_load((REPO / "configs/serve/digits.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    config["applications"][0]["args"]["registry_root"] = head["MAAS_REGISTRY"]
    path = Path(head["WORK"]) / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    deployed = _ray(head, "job", "submit", "--working-dir", ".", "--", "serve", "deploy", str(path),
                    "--address", head["RAY_ADDRESS"], timeout=300)
    assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-2000:]
    url = f"http://127.0.0.1:{port}/v1/models/digits_mlp"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            if requests.get(url, timeout=5).status_code == 200:
                break
        except requests.RequestException:  # refused, reset or timed out while the app starts
            pass
        time.sleep(2)
    body = {"instances": [[[0.0] * 8] * 8]}
    for _ in range(20):
        assert requests.post(f"{url}:predict", json=body, timeout=30).status_code == 200
    found: dict[str, float] = {}
    deadline = time.time() + 90  # replicas push metrics every few seconds
    while time.time() < deadline and len(found) < 3:
        text = requests.get(head["METRICS_URL"], timeout=10).text
        for name in ("ray_maas_requests_total", "ray_maas_rows_predicted_total", "ray_maas_batch_size_count"):
            values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                      if line.startswith(name + "{")]
            if values and sum(values) > 0:
                found[name] = sum(values)
        time.sleep(3)
    assert set(found) == {"ray_maas_requests_total", "ray_maas_rows_predicted_total",
                          "ray_maas_batch_size_count"}, found
    status = subprocess.run([str(BIN / "python"), "-m", "maas", "status"], env=head, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr[-2000:]
    assert "digits_mlp" in status.stdout and "dashboard=" in status.stdout


def test_swap_and_rollback_commands_under_load(head: dict[str, str]) -> None:
    """On the app `serve deploy` put up: register version 2, `python -m maas serve refresh`, then
    `python -m maas serve rollback`, with traffic running the whole time; no request may fail."""
    import yaml

    from maas.registry import Registry

    deployed = Path(head["WORK"]) / "serve.yaml"
    assert deployed.exists(), "runs after test_deploy_as_a_job_then_metrics_reach_prometheus"
    config = yaml.safe_load(deployed.read_text())
    url = f"http://127.0.0.1:{config['http_options']['port']}/v2/models/digits_mlp/infer"

    def maas(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "python"), "-m", "maas", "serve", *args, "digits_mlp"],
                              env=head, cwd=REPO, capture_output=True, text=True, timeout=120)

    registry = Registry(head["MAAS_REGISTRY"])
    first = registry.get("digits_mlp")
    with SteadyLoad(url, threads=3) as load:
        load.wait_for_version(str(first.version), timeout=90, recent=10)
        new = registry.publish("digits_mlp", Path(first.uri), {**first.metadata, "labels": []})
        refreshed = maas("refresh")
        assert refreshed.returncode == 0, refreshed.stderr
        load.wait_for_version(str(new.version), timeout=90, recent=10)
        rolled = maas("rollback")
        assert rolled.returncode == 0 and f'"specific": [{first.version}]' in rolled.stdout, rolled.stderr
        load.wait_for_version(str(first.version), timeout=90, recent=10)
        time.sleep(1)
    answers = load.answers
    failed = [a for a in answers if a[0] != 200]
    assert not failed and len(answers) > 30, (failed[:5], len(answers))
    versions = [v for _, v in answers]
    last_new = len(versions) - 1 - versions[::-1].index(str(new.version))
    assert set(versions[last_new + 1:]) == {str(first.version)}  # after rollback: only the old one
    shown = maas("show")
    assert shown.returncode == 0 and f'"specific": [{first.version}]' in shown.stdout
    bad = subprocess.run([str(BIN / "python"), "-m", "maas", "serve", "rollback", "nope"], env=head,
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "serves no model 'nope'" in bad.stderr
    elsewhere = subprocess.run([str(BIN / "python"), "-m", "maas", "--registry", head["WORK"] + "/none",
                                "serve", "rollback", "digits_mlp"], env=head, cwd=REPO,
                               capture_output=True, text=True, timeout=120)
    assert elsewhere.returncode == 2 and "no version in the registry at" in elsewhere.stderr
    assert "Traceback" not in elsewhere.stderr
