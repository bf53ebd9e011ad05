"""Before a run resumes: is the checkpoint Ray will hand its workers there and whole?

Ray Train resumes a run by name from ``checkpoint_manager_snapshot.json`` in the run's directory;
the snapshot names the latest checkpoint directory. When that directory was deleted or its files
are damaged, the workers fail while restoring, Ray retries them ``run.max_failures`` times and the
user gets a worker traceback. Checked here first, on the driver, the same fault is one message
naming the directory and what to do.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

from maas.errors import ConfigError
from maas.storage import filesystem_for

SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"


class CheckpointError(ConfigError):
    """A run cannot resume: its latest checkpoint is missing or damaged."""


def latest_checkpoint(run_uri: str) -> str | None:
    """The directory of the run's latest checkpoint, per Ray's snapshot; None before the first."""
    fs, run_path = filesystem_for(run_uri)
    snapshot_path = f"{run_path}/{SNAPSHOT_FILE}"
    try:
        with fs.open_input_stream(snapshot_path) as stream:
            snapshot = json.loads(stream.read())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise CheckpointError(f"cannot resume from {run_uri}: Ray's checkpoint record "
                              f"{SNAPSHOT_FILE} there is not valid JSON ({exc}); "
                              f"{_START_OVER}") from None
    latest = (snapshot.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
    return f"{run_uri.rstrip('/')}/{latest}" if latest else None


_START_OVER = "restore it from a backup, or start a new run (another run.name, without --resume)"


def checkpoint_state(run_uri: str, state_file: str) -> tuple[str, dict[str, Any]] | None:
    """The run's latest checkpoint and the training state saved in it (``{"epoch": ...,
    "history": [...]}``), or None when the run has none yet; ``CheckpointError`` naming the
    directory when it is gone or its state file is missing or damaged."""
    checkpoint = latest_checkpoint(run_uri)
    if checkpoint is None:
        return None
    fs, path = filesystem_for(checkpoint)
    state = _read(fs, path, state_file, checkpoint)
    try:
        parsed = json.loads(state)
        int(parsed["epoch"])
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"cannot resume: {state_file} in the run's latest checkpoint "
                              f"{checkpoint} is damaged (not a training state); {_START_OVER}") from None
    return checkpoint, parsed


def check_resumable(run_uri: str, model_file: str, state_file: str) -> dict[str, Any] | None:
    """The latest checkpoint's state (``{"epoch": ...}``), or None when the run has none yet;
    ``CheckpointError`` naming the directory when it is gone or a file in it is damaged."""
    found = checkpoint_state(run_uri, state_file)
    if found is None:
        return None
    checkpoint, parsed = found
    fs, path = filesystem_for(checkpoint)
    model = _read(fs, path, model_file, checkpoint)
    if not _is_whole_zip(model):
        raise CheckpointError(f"cannot resume: {model_file} in the run's latest checkpoint "
                              f"{checkpoint} is damaged (not a whole Keras archive); {_START_OVER}")
    return parsed


def _read(fs: Any, directory: str, name: str, checkpoint: str) -> bytes:
    try:
        with fs.open_input_stream(f"{directory}/{name}") as stream:
            return stream.read()
    except FileNotFoundError:
        if not _exists(fs, directory):
            problem = f"the run's latest checkpoint {checkpoint} was deleted"
        else:
            problem = f"{name} is missing from the run's latest checkpoint {checkpoint}"
        raise CheckpointError(f"cannot resume: {problem}; {_START_OVER}") from None


def _exists(fs: Any, path: str) -> bool:
    import pyarrow.fs as pafs

    return fs.get_file_info(path).type == pafs.FileType.Directory


def _is_whole_zip(data: bytes) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return archive.testzip() is None  # every member's CRC checks out
    except (zipfile.BadZipFile, ValueError, EOFError):
        return False
