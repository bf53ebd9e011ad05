"""The ``pruned`` variant's fine-tuning as a Ray Train run (two workers, MultiWorkerMirroredStrategy)
on the shared small cluster: a rank is SIGKILLed mid-run, the group restarts from its last
checkpoint, and what is registered is still the target sparsity, accurate and agreeing with its
parent."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.integration.test_fault_tolerance import _progress  # one reader of progress records

pytestmark = pytest.mark.integration
EPOCHS = 5


def _kill_rank_1_after_epoch(runs: Path, epoch: int, seen: dict, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for path in runs.glob("prune-*/workers/progress-rank-1.jsonl"):
            lines = _progress(path)
            if lines and lines[-1]["epoch"] >= epoch:
                seen.update(lines[-1], path=path)
                os.kill(lines[-1]["pid"], signal.SIGKILL)
                return
        time.sleep(0.05)


def test_pruning_runs_on_ray_train_and_survives_a_killed_worker(ray_cluster, workspace) -> None:
    from maas.artifacts.keras_loader import load_keras_bytes
    from maas.config import DataConfig, ModelConfig, RunSection, TrainJobConfig
    from maas.optimize.pipeline import run_recipe
    from maas.optimize.recipe import RecipeConfig
    from maas.registry import Registry
    from tests.unit.test_optimize import FAST_EVALUATION, publish_trained

    pytest.importorskip("tensorflow_model_optimization")
    root, runs = str(workspace / "prune-registry"), workspace / "prune-runs"
    cfg = TrainJobConfig(data=DataConfig(source="digits"), model=ModelConfig(hidden_units=[32]),
                         run=RunSection(storage_path=str(runs)))  # where the pruning run is stored
    publish_trained(root, cfg, "digits_prune", epochs=15)
    recipe = RecipeConfig.model_validate({
        "variants": [{"kind": "pruned", "target_sparsity": 0.5, "epochs": EPOCHS, "min_agreement": 0.9,
                      "workers": 2, "max_failures": 2}],
        "evaluation": FAST_EVALUATION})
    killed: dict = {}
    killer = threading.Thread(target=_kill_rank_1_after_epoch, args=(runs, 3, killed), daemon=True)
    killer.start()
    outcome = run_recipe(Registry(root), "digits_prune", "1", recipe, log=lambda *a, **k: None)
    killer.join(timeout=5)
    assert killed, "the worker was never killed: the test proved nothing"
    assert not outcome.refusals, outcome.refusals

    by_pid: dict[int, list[int]] = {}
    for line in _progress(killed["path"]):
        by_pid.setdefault(line["pid"], []).append(line["epoch"])
    assert killed["pid"] in by_pid and len(by_pid) == 2, "rank 1 was not restarted in a new process"
    after = next(epochs for pid, epochs in by_pid.items() if pid != killed["pid"])
    assert after[-1] == EPOCHS and 1 < after[0] <= killed["epoch"] + 1, (after, killed)  # resumed, not redone

    version = Registry(root).get("digits_prune", str(outcome.rows[-1].version))
    metrics = version.metadata["metrics"]
    assert metrics["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert metrics["top1_agreement"] >= 0.9
    assert metrics["test_accuracy"] >= outcome.rows[0].figures["test_accuracy"] - 0.05
    files = Registry(root).read_verified(version, None)
    model = load_keras_bytes(files["model.keras"], "model.keras", "pruned")  # plain Keras again
    kernels = [layer.get_weights()[0] for layer in model.layers if type(layer).__name__ == "Dense"]
    assert all(abs(float(np.mean(k == 0)) - 0.5) <= 0.02 for k in kernels)
