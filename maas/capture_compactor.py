"""The capture compactor: turns a model's spool files (``maas.capture_spool``) into the Parquet
layout of ``maas.capture``, in a process of its own at the lowest CPU priority (nice 19), so the
encoding uses CPU time serving leaves idle instead of the replica's.

A serving replica with capture on starts one (``start``) for each captured model; on a machine with
several replicas, one holds the spool folder's lock and compacts, the others wait for it as
standbys. It compacts every ``--interval`` seconds, up to ``--batch-mb`` of spool per Parquet write
(so files are large: one per version and hour per batch, not one per replica flush), and when its
replica is gone or it is told to stop (SIGTERM) it compacts what is left and exits.

Crash safety: before writing, it records a claim (the spool files and the Parquet names it is about
to write); once every Parquet file is in place, it marks the claim done, then deletes the spool
files. A claim found on start that is not done means the Parquet files it names may be partial:
they are deleted and the spool files compacted again. One that is done only has spool files left
to delete. So a row is in Parquet exactly once, or still in the spool. A spool file that cannot be
read goes to ``_spool/_bad/`` and is counted, never retried forever.

``python -m maas.capture_compactor --spool DIR --registry ROOT --model NAME [--once]`` runs it by
hand (``--once``: one pass, refused while a compactor holds the spool: for what is left after
every replica of a model is gone).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from maas.capture import WRITTEN_FORMAT, list_files, model_dir, write_samples
from maas.capture_spool import read_spool, spool_files
from maas.errors import DataError
from maas.storage import filesystem_for

CLAIM = ".claim.json"
STATUS = ".compactor.json"
LOCK = ".compactor.lock"
BAD_DIR = "_bad"


@dataclass
class Compacted:
    """What compaction has done: rows and Parquet files written, spool files read and set aside."""

    rows: int = 0
    parquet_files: int = 0
    spool_files: int = 0
    bad_files: int = 0
    last_error: str | None = None

    def add(self, other: Compacted) -> None:
        self.rows += other.rows
        self.parquet_files += other.parquet_files
        self.spool_files += other.spool_files
        self.bad_files += other.bad_files
        self.last_error = other.last_error or self.last_error


def compact(spool: str, registry_root: str, model: str, writer: str, batch_bytes: int = 64 << 20,
            next_seq: Callable[[], int] | None = None) -> Compacted:
    """Every finished spool file in ``spool`` -> Parquet under ``registry_root`` (see the module's
    docstring for the order that keeps a row in exactly one place). Holds at most ``batch_bytes``
    of spool in memory at a time."""
    recover(spool, registry_root, model)
    sequence = iter(range(1, 1 << 62))
    next_seq = next_seq or (lambda: next(sequence))
    done = Compacted()
    files = spool_files(spool)
    while files:
        batch = _take(files, batch_bytes)
        files = files[len(batch):]
        samples, readable = [], []
        for path in batch:
            try:
                samples.extend(read_spool(path))
                readable.append(path)
            except (DataError, OSError) as exc:
                _set_aside(path, spool)
                done.bad_files += 1
                done.last_error = str(exc)[:500]
        if samples:
            written = datetime.now(timezone.utc)
            prefix = f"{written.strftime(WRITTEN_FORMAT)}-{writer}-"
            _write_claim(spool, {"prefix": prefix, "spool": [p.name for p in readable], "done": False})
            paths = write_samples(registry_root, model, samples, writer, next_seq, written=written)
            _write_claim(spool, {"prefix": prefix, "spool": [p.name for p in readable], "done": True})
            done.rows += sum(rows for _, _, rows in paths)
            done.parquet_files += len(paths)
        for path in readable:
            path.unlink(missing_ok=True)
        Path(spool, CLAIM).unlink(missing_ok=True)
        done.spool_files += len(readable)
    return done


def _take(files: list[Path], batch_bytes: int) -> list[Path]:
    """The oldest files up to ``batch_bytes`` (at least one)."""
    taken, size = [], 0
    for path in files:
        try:
            size += path.stat().st_size
        except FileNotFoundError:
            continue
        if taken and size > batch_bytes:
            break
        taken.append(path)
    return taken or files[:1]


def recover(spool: str, registry_root: str, model: str) -> None:
    """Finish what a compactor that died left: a claim not done -> delete its Parquet files (the
    spool files are still there); a claim done -> delete its spool files."""
    path = Path(spool, CLAIM)
    try:
        claim = json.loads(path.read_text())
    except FileNotFoundError:
        return
    except ValueError:  # a claim is written whole (renamed): an unreadable one names nothing to undo
        path.unlink(missing_ok=True)
        return
    if claim.get("done"):
        for name in claim.get("spool", []):
            Path(spool, name).unlink(missing_ok=True)
    else:
        fs, _ = filesystem_for(model_dir(registry_root, model))
        for file in list_files(registry_root, model):
            if file.path.rsplit("/", 1)[-1].startswith(claim["prefix"]):
                fs.delete_file(file.path)
    path.unlink(missing_ok=True)


def _write_claim(spool: str, claim: dict[str, Any]) -> None:
    _write_json(Path(spool, CLAIM), claim)


def _write_json(path: Path, value: dict[str, Any]) -> None:
    hidden = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    hidden.write_text(json.dumps(value))
    os.replace(hidden, path)


def _set_aside(path: Path, spool: str) -> None:
    bad = Path(spool, BAD_DIR)
    bad.mkdir(exist_ok=True)
    try:
        os.replace(path, bad / path.name)
    except FileNotFoundError:
        pass


def status(spool: str) -> dict[str, Any] | None:
    """The running compactor's last report for ``spool`` (None: none has reported)."""
    try:
        return json.loads(Path(spool, STATUS).read_text())
    except (FileNotFoundError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# The process


def start(spool: str, registry_root: str, model: str, interval_s: float = 2.0) -> subprocess.Popen:
    """A compactor for ``spool``, child of this process (it exits once this one is gone). In a
    session of its own, so a signal to the replica's process group does not stop it mid-write."""
    os.makedirs(spool, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.Popen(
        [sys.executable, "-m", "maas.capture_compactor", "--spool", spool, "--registry", registry_root,
         "--model", model, "--parent", str(os.getpid()), "--interval", str(interval_s)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env, start_new_session=True)


def run(spool: str, registry_root: str, model: str, parent: int | None, interval_s: float,
        batch_bytes: int, stop: threading.Event) -> Compacted:
    """Wait for the spool's lock (a standby while another compactor holds it), then compact every
    ``interval_s`` until ``stop`` is set or ``parent`` is gone, and once more after."""
    os.makedirs(spool, exist_ok=True)
    writer = f"c{os.getpid()}-{uuid.uuid4().hex[:6]}"
    totals = Compacted()
    with open(Path(spool, LOCK), "a+") as lock:
        while not _locked(lock):
            if stop.is_set() or not _alive(parent):
                return totals  # the holder compacts what is left
            _pause(stop, parent, interval_s)
        while True:
            last = stop.is_set() or not _alive(parent)
            try:
                totals.add(compact(spool, registry_root, model, writer, batch_bytes))
            except Exception as exc:  # noqa: BLE001 - reported, and the next pass retries
                totals.last_error = f"{type(exc).__name__}: {exc}"[:500]
                print(f"maas capture compactor ({model}): {totals.last_error}", file=sys.stderr, flush=True)
            _write_json(Path(spool, STATUS), {"pid": os.getpid(), "writer": writer, "at": time.time(),
                                              "backlog_files": len(spool_files(spool)), **asdict(totals)})
            if last:
                return totals
            _pause(stop, parent, interval_s)


def _pause(stop: threading.Event, parent: int | None, seconds: float) -> None:
    """Until the next pass, a stop, or the parent's end (looked at every half second)."""
    deadline = time.monotonic() + seconds
    while not stop.is_set() and _alive(parent) and time.monotonic() < deadline:
        stop.wait(min(0.5, max(0.0, deadline - time.monotonic())))


def _locked(lock: Any) -> bool:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _alive(parent: int | None) -> bool:
    return parent is None or os.getppid() == parent


def _lower_priority() -> None:
    """Nice 19, and one pyarrow thread: compaction takes only CPU time that serving leaves."""
    try:
        os.nice(19)
    except OSError:
        pass
    import pyarrow as pa

    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)


def compact_if_free(spool: str, registry_root: str, model: str, writer: str,
                    batch_bytes: int = 64 << 20) -> Compacted | None:
    """One pass in this process, unless a compactor holds the spool (None: it compacts it; two
    at once would write rows twice)."""
    os.makedirs(spool, exist_ok=True)
    with open(Path(spool, LOCK), "a+") as lock:
        if not _locked(lock):
            return None
        return compact(spool, registry_root, model, writer, batch_bytes)


def _once(spool: str, registry_root: str, model: str, batch_bytes: int) -> int:
    result = compact_if_free(spool, registry_root, model, f"c{os.getpid()}-{uuid.uuid4().hex[:6]}",
                             batch_bytes)
    if result is None:
        print(f"a compactor is running for {spool} (see {STATUS}); it compacts this spool", file=sys.stderr)
        return 1
    print(json.dumps(asdict(result)))
    return 0


def main(argv: list[str] | None = None) -> int:
    stop = threading.Event()  # first: a stop that comes while Python starts ends the pass, not the process
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    parser = argparse.ArgumentParser(prog="python -m maas.capture_compactor",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--spool", required=True, help="the model's spool folder")
    parser.add_argument("--registry", required=True, help="the registry root (local path or URI)")
    parser.add_argument("--model", required=True, help="the model's name")
    parser.add_argument("--parent", type=int, help="exit (after a last pass) once this process is gone")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between passes")
    parser.add_argument("--batch-mb", type=int, default=64, help="most spool held in memory per write")
    parser.add_argument("--once", action="store_true", help="one pass now, without waiting for the lock")
    args = parser.parse_args(argv)
    _lower_priority()
    if args.once:
        return _once(args.spool, args.registry, args.model, args.batch_mb << 20)
    run(args.spool, args.registry, args.model, args.parent, args.interval, args.batch_mb << 20, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
