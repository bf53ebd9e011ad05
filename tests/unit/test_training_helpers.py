from pathlib import Path

import numpy as np
import pytest

from maas.config import TrainJobConfig
from maas.data import load_dataset
from maas.errors import ConfigError, ModelError
from maas.schema import validate_config
from maas.training import (
    NoModelError,
    TrainingInputError,
    check_capacity,
    check_job,
    choose_run_name,
    confusion_matrix,
    progress_line,
    resolve_use_gpu,
    should_checkpoint,
    steps_per_epoch,
    training_throughput,
    worker_phases,
)


def test_steps_follow_the_smallest_shard() -> None:
    assert steps_per_epoch(1000, 2, 32) == 15   # 500 rows per worker // 32
    assert steps_per_epoch(1001, 3, 10) == 33   # 333 rows in the smallest shard
    assert steps_per_epoch(10, 2, 32) == 0


def _job(**sections) -> TrainJobConfig:
    return validate_config(TrainJobConfig, sections)


def test_too_few_rows_for_workers_times_batch_is_refused() -> None:
    job = _job(training={"batch_size": 512}, scaling={"num_workers": 4})
    with pytest.raises(TrainingInputError, match=r"fewer than num_workers x batch_size = 4 x 512"):
        check_job(job, load_dataset(job.data))


def test_cnn_on_tabular_data_is_refused_before_ray() -> None:
    job = _job(data={"source": "breast_cancer"}, model={"type": "cnn"})
    with pytest.raises(ModelError):
        check_job(job, load_dataset(job.data))


def test_progress_line_is_readable() -> None:
    line = progress_line({"epoch": 3, "loss": 0.5, "accuracy": 0.9, "val_loss": 0.6,
                          "val_accuracy": 0.85, "epoch_time_s": 1.25, "samples_per_s": 1000}, 10)
    assert line == ("[train] epoch 3/10 loss=0.5000 accuracy=0.9000 val_loss=0.6000 "
                    "val_accuracy=0.8500 time=1.25s samples/s=1000")


def test_capacity_check_names_what_is_missing() -> None:
    job = _job(scaling={"num_workers": 3, "cpus_per_worker": 2})
    with pytest.raises(ModelError, match=r"need 6 CPU \(2 each\) but the cluster has 4"):
        check_capacity(job, {"CPU": 4.0}, use_gpu=False)
    check_capacity(job, {"CPU": 6.0}, use_gpu=False)
    autoscaled = _job(scaling={"num_workers": 3, "cpus_per_worker": 2, "autoscaling": True})
    check_capacity(autoscaled, {"CPU": 1.0}, use_gpu=False)


def test_gpu_workers_ask_for_one_gpu_each() -> None:
    job = _job(scaling={"num_workers": 2})
    with pytest.raises(ModelError, match="need 2 GPU"):
        check_capacity(job, {"CPU": 8.0, "GPU": 1.0}, use_gpu=True)
    custom = _job(scaling={"num_workers": 2, "resources_per_worker": {"CPU": 4, "GPU": 0.5}})
    check_capacity(custom, {"CPU": 8.0, "GPU": 1.0}, use_gpu=True)


def test_use_gpu_auto_follows_the_cluster() -> None:
    assert resolve_use_gpu("auto", {"CPU": 2.0}) is False
    assert resolve_use_gpu("auto", {"CPU": 2.0, "GPU": 4.0}) is True
    assert resolve_use_gpu(False, {"GPU": 4.0}) is False
    with pytest.raises(ModelError, match="no GPUs"):
        resolve_use_gpu(True, {"CPU": 2.0})


def test_confusion_matrix_rows_are_true_classes() -> None:
    matrix = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]), 3)
    assert matrix == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]


def test_reusing_a_run_name_needs_resume(tmp_path: Path) -> None:
    (tmp_path / "nightly").mkdir()
    job = _job(run={"name": "nightly", "storage_path": str(tmp_path)})
    with pytest.raises(TrainingInputError, match="already exists.*--resume"):
        choose_run_name(job)
    resumed = _job(run={"name": "nightly", "storage_path": str(tmp_path), "resume": True})
    assert choose_run_name(resumed) == "nightly"
    missing = _job(run={"name": "other", "storage_path": str(tmp_path), "resume": True})
    with pytest.raises(TrainingInputError, match="no run named 'other'"):
        choose_run_name(missing)
    fresh = _job(run={"storage_path": str(tmp_path)})
    assert choose_run_name(fresh).startswith("digits_mlp-")


def test_checkpoints_every_n_epochs_and_always_the_last() -> None:
    assert [e for e in range(1, 31) if should_checkpoint(e, 10, 30)] == [10, 20, 30]
    assert [e for e in range(1, 8) if should_checkpoint(e, 3, 7)] == [3, 6, 7]
    assert [e for e in range(1, 4) if should_checkpoint(e, 1, 3)] == [1, 2, 3]
    assert [e for e in range(1, 3) if should_checkpoint(e, 5, 2)] == [2]


def test_checkpoint_every_epochs_defaults_to_every_epoch() -> None:
    assert _job().run.checkpoint_every_epochs == 1
    with pytest.raises(ConfigError, match="checkpoint_every_epochs"):
        _job(run={"checkpoint_every_epochs": 0})


def test_throughput_counts_training_time_only() -> None:
    assert training_throughput(3000, 1.5) == 2000
    assert training_throughput(3000, 0.0) == 0.0  # a resumed run that had nothing left to train


def test_phases_add_up_and_fit_excludes_checkpoints() -> None:
    timings = {"ready_at": 112.0, "finished_at": 150.0, "fit_s": 30.0, "checkpoint_s": 4.0,
               "test_eval_s": 0.5}
    phases = worker_phases(timings, fit_called_at=100.0, fit_returned_at=153.0)
    assert phases == {"worker_start": 12.0, "fit": 26.0, "checkpoints": 4.0, "test_eval": 0.5,
                      "worker_stop": 3.0}
    skewed = worker_phases({**timings, "ready_at": 99.0}, fit_called_at=100.0, fit_returned_at=153.0)
    assert skewed["worker_start"] == 0.0  # another machine's clock a little behind


def test_cli_prints_user_errors_and_lets_bugs_keep_their_traceback(monkeypatch, capsys) -> None:
    import train.cli
    import tune.cli

    def no_model(*_: object) -> None:
        raise NoModelError("training run 'x' finished without a checkpoint")

    monkeypatch.setattr(train.cli, "_run", no_model)
    assert train.cli.main(["--config", "configs/train/digits_mlp.yaml"]) == NoModelError.exit_code
    assert capsys.readouterr().err.startswith("error: training run 'x' finished without")

    def bug(*_: object) -> None:
        raise ValueError("a bug, not a user error")

    monkeypatch.setattr(train.cli, "_run", bug)
    with pytest.raises(ValueError, match="a bug"):
        train.cli.main(["--config", "configs/train/digits_mlp.yaml"])
    monkeypatch.setattr(tune.cli, "load_tune_config", bug)
    with pytest.raises(ValueError, match="a bug"):
        tune.cli.main(["--config", "configs/tune/smoke.yaml"])


def test_progress_lines_read_back_in_the_order_they_were_written(tmp_path) -> None:
    from maas.training import _append_progress, read_progress

    assert read_progress(str(tmp_path / "run"), 0) == []  # before the first epoch
    for epoch in (1, 2, 2):  # epoch 2 trained again after a restart
        _append_progress(str(tmp_path / "run"), 0, {"epoch": epoch, "pid": 10 + epoch})
    _append_progress(str(tmp_path / "run"), 1, {"epoch": 1, "pid": 99})
    assert [r["epoch"] for r in read_progress(str(tmp_path / "run"), 0)] == [1, 2, 2]
    assert read_progress(str(tmp_path / "run"), 1) == [{"epoch": 1, "pid": 99}]


_APPEND_FOREVER = """
import sys
from maas.training import _append_progress
pad = "x" * 200_000  # a long line: each rewrite takes long enough to be killed inside it
for epoch in range(1, 100_000):
    _append_progress(sys.argv[1], 0, {"epoch": epoch, "pad": pad})
"""


def test_a_process_killed_while_recording_progress_keeps_the_epochs_recorded_before(tmp_path) -> None:
    """Ctrl-C of a sweep kills trials' training processes wherever they are, also inside the
    rewrite of the progress file: what was recorded before must survive (a truncate-then-write
    left the file empty when the kill fell between the two)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from maas.training import read_progress

    run = str(tmp_path / "run")
    progress = tmp_path / "run" / "workers" / "progress-rank-0.jsonl"
    for round_ in range(8):
        child = subprocess.Popen([sys.executable, "-c", _APPEND_FOREVER, run],
                                 env={**os.environ, "PYTHONPATH": os.getcwd()})
        deadline = time.time() + 30
        while len(read_progress(run, 0)) < 3 * (round_ + 1) and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.013 * round_)  # kill at a different point of a rewrite each round
        child.send_signal(signal.SIGKILL)
        child.wait()
        epochs = [line["epoch"] for line in read_progress(run, 0)]
        assert len(epochs) >= 3 * (round_ + 1), epochs  # nothing recorded earlier was lost
    assert progress.exists()


def test_replacing_a_file_that_fails_mid_write_keeps_the_old_file_and_no_temporary(tmp_path,
                                                                                  monkeypatch) -> None:
    from maas.storage import files_for, replace_file

    fs, path = files_for(str(tmp_path / "state.json"))
    replace_file(fs, path, b"old")

    def fail(*_: object) -> None:
        raise KeyboardInterrupt  # a stop between the write and the rename

    monkeypatch.setattr("os.replace", fail)
    with pytest.raises(KeyboardInterrupt):
        replace_file(fs, path, b"new")
    assert (tmp_path / "state.json").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
