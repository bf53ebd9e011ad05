"""A run whose latest checkpoint was deleted or damaged: one clear message naming it, on the
driver, before Ray starts (not worker tracebacks after max_failures retries)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from maas.resume import SNAPSHOT_FILE, CheckpointError, check_resumable
from train.cli import main as train_main

MODEL, STATE = "model.keras", "state.json"


def make_run(storage: Path, name: str = "r1", epochs: int = 2) -> tuple[Path, Path]:
    """A run directory in Ray's layout: a snapshot naming the latest of ``epochs`` checkpoints."""
    run = storage / name
    names = [f"checkpoint_2026-11-24_10-00-0{epoch}.000000" for epoch in range(1, epochs + 1)]
    for epoch, directory in enumerate(names, 1):
        (run / directory).mkdir(parents=True)
        with zipfile.ZipFile(run / directory / MODEL, "w") as archive:
            archive.writestr("config.json", json.dumps({"epoch": epoch}))
            archive.writestr("model.weights.h5", b"\0" * 4096)
        (run / directory / STATE).write_text(json.dumps({"epoch": epoch, "history": []}))
    latest = {"checkpoint_dir_name": names[-1], "metrics": {"epoch": epochs}}
    (run / SNAPSHOT_FILE).write_text(json.dumps({"latest_checkpoint_result": latest}))
    return run, run / names[-1]


def test_a_whole_checkpoint_passes_and_gives_its_epoch(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path)
    assert check_resumable(str(run), MODEL, STATE)["epoch"] == 2


def test_a_run_without_a_checkpoint_yet_has_nothing_to_check(tmp_path: Path) -> None:
    (tmp_path / "r1").mkdir()
    assert check_resumable(str(tmp_path / "r1"), MODEL, STATE) is None


def test_a_deleted_checkpoint_directory_is_named(tmp_path: Path) -> None:
    import shutil

    run, latest = make_run(tmp_path)
    shutil.rmtree(latest)
    with pytest.raises(CheckpointError, match=f"checkpoint {latest} was deleted.*another run.name"):
        check_resumable(str(run), MODEL, STATE)


def test_a_missing_model_file_is_named(tmp_path: Path) -> None:
    run, latest = make_run(tmp_path)
    (latest / MODEL).unlink()
    with pytest.raises(CheckpointError, match=f"model.keras is missing from .*{latest.name}"):
        check_resumable(str(run), MODEL, STATE)


def test_a_truncated_model_archive_is_refused(tmp_path: Path) -> None:
    run, latest = make_run(tmp_path)
    data = (latest / MODEL).read_bytes()
    (latest / MODEL).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.keras .* is damaged"):
        check_resumable(str(run), MODEL, STATE)


def test_a_flipped_byte_inside_the_archive_is_refused(tmp_path: Path) -> None:
    run, latest = make_run(tmp_path)
    data = bytearray((latest / MODEL).read_bytes())
    data[100] ^= 0xFF  # inside a stored member: its CRC no longer matches
    (latest / MODEL).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is damaged"):
        check_resumable(str(run), MODEL, STATE)


@pytest.mark.parametrize("state", ["{not json", json.dumps({"history": []})])
def test_a_damaged_state_file_is_refused(tmp_path: Path, state: str) -> None:
    run, latest = make_run(tmp_path)
    (latest / STATE).write_text(state)
    with pytest.raises(CheckpointError, match="state.json .* is damaged"):
        check_resumable(str(run), MODEL, STATE)


def test_a_damaged_snapshot_is_named(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path)
    (run / SNAPSHOT_FILE).write_text("{")
    with pytest.raises(CheckpointError, match=f"{SNAPSHOT_FILE} there is not valid JSON"):
        check_resumable(str(run), MODEL, STATE)


def test_train_resume_stops_before_ray_with_the_message(tmp_path: Path, capsys,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import maas.raycluster

    run, latest = make_run(tmp_path / "runs", name="digits-run")
    shutil.rmtree(latest)
    monkeypatch.setattr(maas.raycluster, "init_ray", lambda *a, **k: pytest.fail("Ray was started"))
    code = train_main(["--config", "configs/train/smoke.yaml", "--resume",
                       "--set", f"run.storage_path={tmp_path / 'runs'}", "--set", "run.name=digits-run"])
    err = capsys.readouterr().err
    assert code == 2 and f"{latest} was deleted" in err and "Traceback" not in err
