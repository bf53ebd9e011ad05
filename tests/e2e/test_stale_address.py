"""A stopped cluster's address never makes a command hang (project issue 11, item 12).

`ray start --head --block` stopped by SIGTERM (what `make down` does) leaves Ray's record of the
"current cluster" behind, and `ray.init()` with no address followed it to the dead GCS for as long
as it was let ("Failed to connect to GCS at address ..."). Every entry point now checks the
address first: a stale record starts a local instance at once, a named dead address fails fast.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
RECORD = Path("/tmp/ray/ray_current_cluster")  # Ray's record of the last `ray start`, machine-wide
TRAIN = [str(BIN / "python"), "-m", "train", "--config", "configs/train/breast_cancer_mlp.yaml",
         "--config", "configs/train/smoke.yaml", "--set", "scaling.num_workers=1"]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "RAY_AUTH_MODE": "disabled", "MAAS_REGISTRY": str(tmp_path / "registry"),
            "MAAS_STORAGE": str(tmp_path / "runs"), "PATH": f"{BIN}:{os.environ['PATH']}", **extra}


def _read_record() -> str | None:
    try:
        return RECORD.read_text()
    except OSError:
        return None


@pytest.fixture(scope="module")
def stale_record(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A head started and stopped the way `make demo` / `make down` do, leaving its address in
    the record; the record as it was before is put back afterwards."""
    saved = _read_record()
    gcs_port = free_port()
    work = tmp_path_factory.mktemp("stale")
    command = [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=1",
               f"--port={gcs_port}", "--include-dashboard=false",
               f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
               f"--metrics-export-port={free_port()}", "--min-worker-port=21000", "--max-worker-port=21999"]
    with open(work / "ray.log", "w") as log:
        process = subprocess.Popen(command, env=_env(work), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    ours = None
    try:
        ours = _wait_for_record(gcs_port, process, work / "ray.log")
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        yield ours
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        # put back what was there, unless someone else's `ray start` wrote the record since
        if _read_record() in (ours, None) and saved is not None:
            RECORD.write_text(saved)
        elif _read_record() == ours:
            RECORD.unlink()


def _wait_for_record(gcs_port: int, process: subprocess.Popen, log: Path) -> str:
    deadline = time.time() + 120
    while time.time() < deadline:
        assert process.poll() is None, "ray start exited early:\n" + log.read_text()[-2000:]
        recorded = _read_record()
        if recorded and recorded.strip().endswith(f":{gcs_port}"):
            return recorded
        time.sleep(0.5)
    raise TimeoutError("ray start never recorded its address:\n" + log.read_text()[-2000:])


def _run_timed(command: list[str], env: dict[str, str], timeout: float) -> tuple[
        subprocess.CompletedProcess, list[tuple[float, str]]]:
    """Run ``command``; returns the result and each output line with its seconds from the start."""
    started = time.time()
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend((time.time() - started, line)
                                                          for line in process.stdout), daemon=True)
    reader.start()
    try:
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
        reader.join(timeout=10)
    output = "".join(line for _, line in lines)
    return subprocess.CompletedProcess(command, process.returncode, output, ""), lines


def _seconds_between(lines: list[tuple[float, str]], first: str, then: str) -> float | None:
    """Seconds from the first line holding ``first`` to the next line holding ``then``."""
    start = next((t for t, line in lines if first in line), None)
    end = next((t for t, line in lines if then in line and start is not None and t >= start), None)
    return None if start is None or end is None else end - start


def test_the_record_survives_sigterm(stale_record: str) -> None:
    """The reproduction: what `make down` used to leave behind."""
    assert _read_record() == stale_record


def test_train_with_a_stale_record_starts_a_local_cluster_at_once(stale_record: str,
                                                                  tmp_path: Path) -> None:
    result, lines = _run_timed(TRAIN, _env(tmp_path), timeout=600)
    elapsed = lines[-1][0] if lines else float("inf")
    # "[train] data ..." is printed just before init_ray; the note just before ray.init
    decided = _seconds_between(lines, "[train] data", "does not answer")
    started = _seconds_between(lines, "[train] data", "Started a local Ray instance")
    print(f"stale record {stale_record}: decided in {decided}s, local Ray up {started}s after the "
          f"data line, train finished in {elapsed:.1f}s")
    assert result.returncode == 0, result.stdout[-4000:]
    assert "Failed to connect to GCS" not in result.stdout
    assert "does not answer" in result.stdout and stale_record in result.stdout  # the note says why
    assert "test_accuracy=" in result.stdout
    assert decided is not None and decided < 10, result.stdout[-3000:]
    assert elapsed < 240


def test_status_with_a_stale_record_fails_fast(stale_record: str, tmp_path: Path) -> None:
    started = time.time()
    result = subprocess.run([str(BIN / "python"), "-m", "maas", "status"], env=_env(tmp_path),
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    elapsed = time.time() - started
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no running Ray cluster" in result.stderr and stale_record in result.stderr
    assert elapsed < 15


@pytest.mark.parametrize("how", ["--address", "RAY_ADDRESS"])
def test_an_explicit_dead_address_fails_fast_naming_it(how: str, tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    command, env = TRAIN, _env(tmp_path)
    if how == "--address":
        command = [*TRAIN, "--address", dead]
    else:
        env["RAY_ADDRESS"] = dead
    started = time.time()
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    elapsed = time.time() - started
    print(f"dead {how}={dead}: exit {result.returncode} after {elapsed:.1f}s")
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(rf"no Ray cluster answers at {re.escape(dead)} \(from {how}\)", result.stderr)
    assert "Failed to connect to GCS" not in result.stdout + result.stderr
    assert elapsed < 15
