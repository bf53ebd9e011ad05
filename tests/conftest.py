"""Shared fixtures. Nothing here starts Ray: integration/conftest.py does, once per session."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from maas.localcluster import forget_address_record, free_port  # noqa: F401 - tests import free_port from here

REPO = Path(__file__).resolve().parents[1]

# Chosen explicitly (docs/serving-on-ray.md): an unset mode turns token auth on for local clusters.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_USE_LEGACY_KERAS"] = "1"




def stop_ray_head(head: subprocess.Popen, gcs_port: int) -> None:
    """Stop exactly the `ray start --head --block` a test started (SIGTERM stops its processes,
    never a broad `ray stop`), then remove Ray's machine-wide record of it: stopped by signal,
    `ray start` leaves that record behind, and a later `ray.init()` would follow it to nothing."""
    head.send_signal(signal.SIGTERM)
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
    forget_address_record(gcs_port)


@pytest.fixture
def registry_root(tmp_path: Path) -> str:
    return str(tmp_path / "registry")


class SteadyLoad:
    """Steady single-row V2 traffic from a few threads, for swap and scaling tests; records every
    answer as (status, model version), or (exception name, None) when the request failed."""

    def __init__(self, url: str, threads: int = 4, headers: dict[str, str] | None = None):
        import threading

        self.url, self.answers, self.stop = url, [], threading.Event()
        self.headers = headers or {}
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        self.body = json.dumps({"inputs": [{"name": "inputs", "shape": [1, 8, 8], "datatype": "FP32",
                                            "data": [0.0] * 64}]})

    def _run(self) -> None:
        import requests

        with requests.Session() as session:
            while not self.stop.is_set():
                try:
                    reply = session.post(self.url, data=self.body, headers=self.headers, timeout=30)
                    version = reply.json().get("model_version") if reply.status_code == 200 else None
                    self.answers.append((reply.status_code, version))
                except requests.RequestException as exc:
                    self.answers.append((type(exc).__name__, None))

    def __enter__(self) -> SteadyLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def wait_for_version(self, version: str, timeout: float = 60, recent: int = 20) -> None:
        """Until one of the last ``recent`` answers came from ``version``."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(v == version for _, v in self.answers[-recent:]):
                return
            time.sleep(0.2)
        raise AssertionError(f"version {version} never answered; last: {self.answers[-5:]}")
