"""A real sweep (each trial a Ray Train run) interrupted with Ctrl-C, then resumed with --resume."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from maas.registry import Registry
from tests.conftest import REPO

pytestmark = pytest.mark.integration


def _any_epoch_checkpointed(sweep: Path) -> bool:
    return any(sweep.glob("trials/*/checkpoint_*"))


def _checkpointed_epochs(sweep: Path) -> dict[str, int]:
    """Each trial's Train run: the epoch of its latest checkpoint (0: none yet)."""
    from maas.resume import check_resumable
    from maas.training import MODEL_FILE, STATE_FILE

    return {run.name: int((check_resumable(str(run), MODEL_FILE, STATE_FILE) or {"epoch": 0})["epoch"])
            for run in (sweep / "trials").iterdir()}


def _wait_until_still(directory: Path, quiet_s: float = 3, timeout_s: float = 60) -> None:
    """Until nothing under ``directory`` has changed for ``quiet_s``: the driver is gone, but its
    trials' training processes end a moment later."""
    def state() -> list[tuple[str, int, float]]:
        seen = []
        for path in directory.rglob("*"):
            try:  # a temporary file may be renamed away between listing and stat
                info = path.stat()
            except FileNotFoundError:
                continue
            seen.append((str(path), info.st_size, info.st_mtime))
        return sorted(seen)

    deadline, last, since = time.time() + timeout_s, state(), time.time()
    while time.time() - since < quiet_s:
        assert time.time() < deadline, f"{directory} still changing {timeout_s} s after the driver ended"
        time.sleep(0.5)
        now = state()
        if now != last:
            last, since = now, time.time()


def _trained_epochs(sweep: Path, run: str) -> list[int]:
    """Every epoch rank 0 of a trial's Train run finished, in order, over all its attempts."""
    from maas.training import read_progress

    return [line["epoch"] for line in read_progress(str(sweep / "trials" / run), 0)]


def test_interrupted_sweep_resumes_and_registers_the_best(ray_cluster, workspace) -> None:
    import ray

    registry = workspace / "tune-registry"
    env = {**os.environ, "MAAS_REGISTRY": str(registry), "RAY_AUTH_MODE": "disabled"}
    # No early stopping and a few more epochs: long enough to be interrupted mid-way for sure.
    command = [sys.executable, "-m", "tune", "--config", "configs/tune/smoke.yaml",
               "--set", f"storage_path={workspace / 'sweeps'}", "--set", "search.scheduler=none",
               "--set", "train_overrides.training.epochs=4",
               "--address", ray.get_runtime_context().gcs_address]
    sweep = workspace / "sweeps" / "digits-smoke"

    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not _any_epoch_checkpointed(sweep) and time.time() < deadline and first.poll() is None:
        time.sleep(0.2)
    assert first.poll() is None, "the sweep ended before it could be interrupted"
    first.send_signal(signal.SIGINT)  # what Ctrl-C does, while the first trials are mid-run
    output, _ = first.communicate(timeout=180)
    assert first.returncode != 0 and "continue it with --resume" in output, output[-2000:]
    assert not (sweep / "results.csv").exists(), "an interrupted sweep must not publish results"
    assert not (registry / "digits_tuned").exists(), "an interrupted sweep must not register a model"
    # Where each trial's own run stood when the sweep was stopped (Tune's cleanup lets a run go
    # on for a moment after Tune's last save: sometimes to its last epoch).
    _wait_until_still(sweep / "trials")
    at_interrupt = _checkpointed_epochs(sweep)
    trained_before = {run: len(_trained_epochs(sweep, run)) for run in at_interrupt}
    assert at_interrupt, "no trial had started"

    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 2 and "already exists" in again.stderr  # no accidental restart

    resumed = subprocess.run([*command, "--resume"], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "[tune] best:" in resumed.stdout

    rows = list(csv.DictReader((sweep / "results.csv").open()))
    assert len(rows) == 3
    # Every trial ran to its end: the ones running at Ctrl-C were continued, not dropped.
    assert [(r["status"], r["epochs_run"]) for r in rows] == [("completed", "4")] * 3, rows
    runs = _checkpointed_epochs(sweep)
    assert len(runs) == 3 and set(runs.values()) == {4}, runs
    for run, epochs in ((run, _trained_epochs(sweep, run)) for run in runs):
        # A run stopped mid-way continued from its own last checkpoint: after the resume it
        # trained exactly the epochs after that checkpoint (the one in flight at the stop, if
        # any, again), and a trial that had not started trained all of them.
        done, before = at_interrupt.get(run, 0), trained_before.get(run, 0)
        assert epochs[before:] == list(range(done + 1, 5)), (run, at_interrupt, epochs)
        # Before the stop it trained from epoch 1, each once; it may have trained past its last
        # checkpoint while Tune wound down (two epochs, once in CI), and only those came again.
        assert epochs[:before] == list(range(1, before + 1)) and before >= done, (run, epochs)
        assert sorted(set(epochs)) == [1, 2, 3, 4], (run, epochs)
    for trial in sweep.glob("run_trial_*/result.json"):
        # Tune's own record never repeats an epoch (it may miss those trained after its last save)
        epochs = [int(line.split('"epoch": ')[1].split(",")[0]) for line in trial.read_text().splitlines()]
        assert epochs == sorted(set(epochs)), (trial.parent.name, epochs)
    assert (sweep / "trials.png").read_bytes()[:4] == b"\x89PNG"

    version = Registry(str(registry)).get("digits_tuned")
    sweep_meta = version.metadata["sweep"]
    assert sweep_meta["name"] == "digits-smoke" and sweep_meta["trials"] == 3
    assert set(sweep_meta["hyperparameters"]) == {"optimizer.learning_rate", "model.hidden_units"}
    best = max(rows, key=lambda r: float(r["final_val_accuracy"]))
    assert sweep_meta["trial"] == best["trial"]
    assert 0 < version.metadata["metrics"]["test_accuracy"] <= 1


def test_asha_sweep_frees_the_worker_groups_of_stopped_trials(ray_cluster, workspace) -> None:
    """Tune ends a stopped trial's process, which kills its Train controller before the controller
    removes its placement group. Unfreed, those groups hold the CPUs later trials wait for."""
    import ray

    from maas.tuning import load_tune_config, run_sweep

    def live_groups() -> set[str]:
        return {key for key, g in ray.util.placement_group_table().items() if g["state"] != "REMOVED"}

    before = live_groups()
    cfg, base = load_tune_config(REPO / "configs/tune/smoke.yaml", [
        "name=asha-cleanup", f"storage_path={workspace / 'sweeps'}", "search.scheduler=asha",
        "search.num_samples=4", "search.time_budget_s=300",
        f"train_overrides.registry.root={workspace / 'asha-registry'}",
    ])
    outcome = run_sweep(cfg, base)

    assert len(outcome.rows) == 4 and outcome.version.version == 1
    deadline = time.time() + 30  # Tune removes the trials' own groups as their actors end
    while live_groups() - before and time.time() < deadline:
        time.sleep(0.5)
    assert live_groups() - before == set(), ray.util.placement_group_table()
