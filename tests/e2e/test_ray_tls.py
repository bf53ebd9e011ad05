"""Ray's own traffic encrypted (gRPC between drivers, raylets and GCS) together with token auth,
on one node: `ray start --head` with RAY_USE_TLS=1 and a certificate from a throw-away CA. A
driver with the certificate and the token runs a task; one without TLS settings cannot join."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port, stop_ray_head
from tests.e2e.test_tls import write_pki

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent

DRIVER = """
import ray
ray.init(address="{address}", logging_level="ERROR", log_to_driver=False)
print("sum", ray.get(ray.remote(lambda a, b: a + b).remote(20, 22)))
"""


@pytest.fixture(scope="module")
def tls_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    from ray.util import get_node_ip_address

    work = tmp_path_factory.mktemp("ray-tls")
    # Ray's processes reach the GCS at the node's own address, not only at 127.0.0.1
    pki = write_pki(work, ips=("127.0.0.1", get_node_ip_address()))
    gcs_port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env.update(RAY_USE_TLS="1", RAY_TLS_SERVER_CERT=str(pki["server"]),
               RAY_TLS_SERVER_KEY=str(pki["server_key"]), RAY_TLS_CA_CERT=str(pki["ca"]),
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    command = [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=1", f"--port={gcs_port}",
               "--include-dashboard=false",
               f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
               f"--metrics-export-port={free_port()}", "--min-worker-port=21000", "--max-worker-port=21999"]
    log = open(work / "ray.log", "w")
    head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{gcs_port}"
    try:
        _wait_until_joinable(address, env, head, work / "ray.log")
        yield address, env
    finally:
        stop_ray_head(head, gcs_port)
        log.close()


def _driver(address: str, env: dict[str, str], timeout: int = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", DRIVER.format(address=address)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def _wait_until_joinable(address: str, env: dict[str, str], head: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        if head.poll() is not None:
            pytest.fail(f"ray start exited:\n{log.read_text()[-3000:]}")
        if "sum 42" in _driver(address, env).stdout:
            return
        time.sleep(2)
    pytest.fail(f"a TLS driver never joined:\n{log.read_text()[-3000:]}")


def test_a_driver_with_the_certificate_and_token_runs_tasks(tls_head) -> None:
    address, env = tls_head
    done = _driver(address, env)
    assert done.returncode == 0 and "sum 42" in done.stdout, done.stderr[-2000:]


def test_a_driver_without_tls_cannot_join(tls_head) -> None:
    address, env = tls_head
    plain = {key: value for key, value in env.items()
             if not key.startswith("RAY_TLS") and key != "RAY_USE_TLS"}
    try:
        done = _driver(address, plain, timeout=20)
    except subprocess.TimeoutExpired:
        return  # it never got through the handshake: refused, the slow way
    assert done.returncode != 0 and "sum 42" not in done.stdout
