"""A real worker process is SIGKILLed mid-run; the run must finish from its last checkpoint."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from maas.config import load_config
from maas.training import run_training
from tests.conftest import REPO

pytestmark = pytest.mark.integration
EPOCHS = 7


def _progress(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _kill_rank_1_after_epoch(path: Path, epoch: int, seen: dict, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        lines = _progress(path)
        if lines and lines[-1]["epoch"] >= epoch:
            seen.update(lines[-1])
            os.kill(lines[-1]["pid"], signal.SIGKILL)
            return
        time.sleep(0.05)


def test_killed_worker_resumes_from_checkpoint_without_repeating_epochs(ray_cluster, workspace) -> None:
    cfg = load_config(REPO / "configs/train/digits_mlp.yaml", [
        f"registry.root={workspace / 'registry'}", f"run.storage_path={workspace / 'runs'}",
        f"training.epochs={EPOCHS}", "model.hidden_units=[32]", "run.max_failures=2",
        "run.checkpoint_every_epochs=1", "registry.model_name=digits_fault",
    ])
    workers = workspace / "runs" / "it-fault" / "workers"
    killed: dict = {}
    killer = threading.Thread(target=_kill_rank_1_after_epoch,
                              args=(workers / "progress-rank-1.jsonl", 3, killed), daemon=True)
    killer.start()
    outcome = run_training(cfg, run_name="it-fault")
    killer.join(timeout=5)
    assert killed, "the worker was never killed: the test proved nothing"

    # Ray registers a checkpoint once the controller has collected the report, which can trail the
    # workers by an epoch; what must hold is: not from scratch, and nothing before it trained twice.
    resumed = outcome.metrics["resumed_from_epoch"]
    assert 1 <= resumed <= killed["epoch"], "restarted from scratch"
    by_pid: dict[int, list[int]] = {}
    for line in _progress(workers / "progress-rank-1.jsonl"):
        by_pid.setdefault(line["pid"], []).append(line["epoch"])
    assert killed["pid"] in by_pid and len(by_pid) == 2, "rank 1 was not restarted in a new process"
    after = next(epochs for pid, epochs in by_pid.items() if pid != killed["pid"])
    assert after == list(range(resumed + 1, EPOCHS + 1)), "epochs before the checkpoint were repeated"

    metadata = outcome.version.metadata
    assert [int(h["epoch"]) for h in json.loads(
        (Path(outcome.version.uri) / "history.json").read_text())] == list(range(1, EPOCHS + 1))
    assert metadata["training"]["epochs"] == EPOCHS
    assert metadata["metrics"]["test_accuracy"] > 0.8
