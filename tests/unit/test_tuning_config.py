from pathlib import Path

import pytest
import yaml

from maas.errors import ConfigError, MaasError
from maas.tuning import (
    Choice,
    NoTrialModelError,
    SearchSection,
    best_row,
    concurrent_trials,
    load_tune_config,
    trial_config,
    write_results,
)
from tests.conftest import REPO


def _sweep(tmp_path: Path, space: dict, **search) -> Path:
    config = {"name": "t", "train_config": [str(REPO / "configs/train/digits_mlp.yaml")],
              "search": {"space": space, **search}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("name", ["digits.yaml", "smoke.yaml"])
def test_shipped_sweeps_validate(name: str) -> None:
    cfg, base = load_tune_config(REPO / "configs/tune" / name)
    assert cfg.search.space and base.scaling.num_workers == 1


def test_unknown_space_key_is_refused_before_any_trial(tmp_path: Path) -> None:
    path = _sweep(tmp_path, {"model.hiden_units": {"type": "choice", "values": [[8]]}})
    with pytest.raises(ConfigError, match=r"(?s)search.space.model.hiden_units.*unknown key"):
        load_tune_config(path)


def test_value_outside_the_training_schema_is_refused(tmp_path: Path) -> None:
    path = _sweep(tmp_path, {"model.dropout": {"type": "uniform", "low": 0.5, "high": 1.5}})
    with pytest.raises(ConfigError, match=r"model.dropout = 1.5 is not a valid"):
        load_tune_config(path)


@pytest.mark.parametrize("domain, message", [
    ({"type": "choice", "values": []}, "at least 1 item"),
    ({"type": "loguniform", "low": 0.1, "high": 0.01}, "must be below high"),
    ({"type": "loguniform", "low": 0, "high": 0.01}, "greater than 0"),
    ({"type": "normal", "mu": 0}, "type"),
])
def test_bad_domains(tmp_path: Path, domain: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_tune_config(_sweep(tmp_path, {"optimizer.learning_rate": domain}))


def test_empty_space_and_unknown_search_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="space"):
        load_tune_config(_sweep(tmp_path, {}))
    with pytest.raises(ConfigError, match="num_sampels: unknown key"):
        load_tune_config(_sweep(tmp_path, {"model.dropout": {"type": "choice", "values": [0.1]}},
                                num_sampels=3))


def test_trial_config_sets_dotted_keys() -> None:
    job = trial_config({"model": {"type": "mlp", "dropout": 0.1}},
                       {"model.dropout": 0.3, "optimizer.learning_rate": 0.01})
    assert job == {"model": {"type": "mlp", "dropout": 0.3}, "optimizer": {"learning_rate": 0.01}}


def test_concurrency_follows_free_cpus() -> None:
    _, base = load_tune_config(REPO / "configs/tune/digits.yaml")
    search = SearchSection(space={"model.dropout": Choice(type="choice", values=[0.1])})
    assert concurrent_trials(search, base, cluster_cpus=4) == 3  # 4 x (1 + 0.01) does not fit
    assert concurrent_trials(search, base, cluster_cpus=2) == 1
    assert concurrent_trials(search.model_copy(update={"max_concurrent_trials": 2}), base, 4) == 2


def _row(trial: str, final: float, status: str = "completed", ckpt: str | None = "x") -> dict:
    return {"trial": trial, "param.model.dropout": 0.1, "final_val_accuracy": final,
            "best_val_accuracy": final, "epochs_run": 3 if status == "completed" else 1,
            "status": status, "checkpoint_path": ckpt, "_history": [final / 2, final][: 2],
            "_params": {}, "_epochs": []}


def test_best_row_and_results_files(tmp_path: Path) -> None:
    search = SearchSection(space={"model.dropout": Choice(type="choice", values=[0.1])})
    rows = [_row("a", 0.8), _row("b", 0.95), _row("c", 0.5, "stopped"), _row("d", 0.99, ckpt=None)]
    assert best_row(rows, search)["trial"] == "b"
    csv_path, png_path = write_results(rows, search, tmp_path)
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("trial,param.model.dropout,final_val_accuracy")
    assert lines[1].startswith("d,") and len(lines) == 5
    assert png_path.read_bytes()[:4] == b"\x89PNG"


def test_no_usable_trial_is_a_user_facing_error() -> None:
    search = SearchSection(space={"model.dropout": Choice(type="choice", values=[0.1])})
    with pytest.raises(NoTrialModelError, match="nothing to register") as caught:
        best_row([_row("a", 0.9, ckpt=None)], search)
    assert isinstance(caught.value, MaasError) and caught.value.exit_code == 2


def test_ctrl_c_is_told_apart_from_a_normal_end() -> None:
    import signal

    from maas.tuning import watch_ctrl_c

    with watch_ctrl_c() as interrupted:
        signal.signal(signal.SIGINT, lambda *_: None)  # Tune installs its handler and keeps it
    assert interrupted() is False
    with watch_ctrl_c() as interrupted:
        pass  # Tune's handler saw Ctrl-C and put the previous one back
    assert interrupted() is True


def _epoch(n: int, acc: float, ckpt: str | None = None) -> dict:
    return {"epoch": n, "loss": 1 - acc, "accuracy": acc, "val_loss": 1 - acc, "val_accuracy": acc,
            **({"checkpoint_path": ckpt} if ckpt else {})}


def _trial_row(tune: list[dict], saved: list[dict], saved_ckpt: str | None, failed: bool = False) -> dict:
    from maas.tuning import trial_row

    search = SearchSection(space={"model.dropout": Choice(type="choice", values=[0.1])})
    last_ckpt = next((r["checkpoint_path"] for r in reversed(tune) if "checkpoint_path" in r), None)
    return trial_row(trial="run_trial_x_00000_0_a", params={"model.dropout": 0.1}, tune_records=tune,
                     tune_checkpoint=last_ckpt, saved_history=saved, saved_checkpoint=saved_ckpt,
                     failed=failed, search=search, epochs=4)


def test_a_run_that_trained_on_after_tunes_last_save_counts_what_it_trained() -> None:
    """Ctrl-C: Tune saved its record at epoch 2, the trial's Train run went on to epoch 4 before
    Tune's cleanup ended it; resumed, it had nothing left to report. Its checkpoint says what
    it trained: the trial completed, and that checkpoint is the one to register."""
    row = _trial_row(tune=[_epoch(1, 0.5, "c1"), _epoch(2, 0.6, "c2")],
                     saved=[_epoch(e, a) for e, a in ((1, 0.5), (2, 0.6), (3, 0.7), (4, 0.8))],
                     saved_ckpt="c4")
    assert (row["status"], row["epochs_run"], row["checkpoint_path"]) == ("completed", 4, "c4")
    assert row["_history"] == [0.5, 0.6, 0.7, 0.8] and row["final_val_accuracy"] == 0.8
    assert [e["epoch"] for e in row["_epochs"]] == [1, 2, 3, 4]


def test_tunes_record_counts_epochs_reported_after_the_last_checkpoint_once() -> None:
    # checkpoints every 2 epochs: epoch 3 was reported without one; epoch 2 reported twice
    # (trained again after a restart)
    row = _trial_row(tune=[_epoch(1, 0.5), _epoch(2, 0.55, "c2"), _epoch(2, 0.6, "c2b"), _epoch(3, 0.7)],
                     saved=[_epoch(1, 0.5), _epoch(2, 0.6)], saved_ckpt="c2b")
    assert (row["status"], row["epochs_run"], row["_history"]) == ("stopped", 3, [0.5, 0.6, 0.7])
    assert row["checkpoint_path"] == "c2b"


def test_without_a_readable_checkpoint_tunes_record_is_the_row() -> None:
    row = _trial_row(tune=[_epoch(1, 0.5, "c1"), _epoch(2, 0.6, "c2")], saved=[], saved_ckpt=None)
    assert (row["status"], row["epochs_run"], row["checkpoint_path"]) == ("stopped", 2, "c2")
    failed = _trial_row(tune=[], saved=[], saved_ckpt=None, failed=True)
    assert failed["status"] == "error" and failed["epochs_run"] == 0 and failed["checkpoint_path"] is None


def test_a_trials_train_run_is_found_by_the_name_tune_gives_its_directory(tmp_path: Path) -> None:
    import json

    from maas.tuning import _checkpointed_history, _train_runs

    for run, epoch in (("run_trial_ab_00001", 3), ("run_trial_ab_00011", 1)):
        checkpoint = tmp_path / run / "checkpoint_x"
        checkpoint.mkdir(parents=True)
        (checkpoint / "state.json").write_text(json.dumps({"epoch": epoch, "history": [_epoch(epoch, 0.9)]}))
        (tmp_path / run / "checkpoint_manager_snapshot.json").write_text(
            json.dumps({"latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_x"}}))
    runs = _train_runs(str(tmp_path))
    found, history = _checkpointed_history(runs, "run_trial_ab_00001_1_model.dropout=0.1_2026-12-06")
    assert found == f"{tmp_path}/run_trial_ab_00001/checkpoint_x" and history[0]["epoch"] == 3
    assert _checkpointed_history(runs, "run_trial_ab_00002_2_x") == (None, [])
    (tmp_path / "run_trial_ab_00011" / "checkpoint_manager_snapshot.json").write_text("{not json")
    assert _checkpointed_history(runs, "run_trial_ab_00011_3_x") == (None, [])
    assert _train_runs(str(tmp_path / "missing")) == {}
