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
from maas.capture_spool import (
    blank_bytes,
    blanks,
    drop_blanks,
    memory_root,
    read_spool,
    recycle,
    reserve,
    spool_bytes,
    spool_files,
)
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
            next_seq: Callable[[], int] | None = None,
            keep_going: Callable[[], bool] = lambda: True, reuse_bytes: int = 0) -> Compacted:
    """Every finished spool file in ``spool`` -> Parquet under ``registry_root`` (see the module's
    docstring for the order that keeps a row in exactly one place). Holds at most ``batch_bytes``
    of spool in memory at a time; asks ``keep_going()`` before each batch after the first. Spool
    files done with are kept as blanks for the writers to reuse while the blanks hold under
    ``reuse_bytes`` (``maas.capture_spool``: writing into held memory is cheaper), else deleted."""
    recover(spool, registry_root, model)
    kept = blank_bytes(spool)
    sequence = iter(range(1, 1 << 62))
    next_seq = next_seq or (lambda: next(sequence))
    done = Compacted()
    files = spool_files(spool)
    while files and (done.spool_files == 0 or keep_going()):
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
            claim = {"prefix": f"{written.strftime(WRITTEN_FORMAT)}-{writer}-",
                     "spool": [p.name for p in readable], "done": False}
            _write_claim(spool, claim)
            paths = write_samples(registry_root, model, samples, writer, next_seq, written=written)
            _write_claim(spool, {**claim, "done": True})
            done.rows += sum(rows for _, _, rows in paths)
            done.parquet_files += len(paths)
        for path in readable:
            kept = recycle(path, spool, reuse_bytes, kept)
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


def start(spool: str, registry_root: str, model: str, policy: Policy | None = None) -> subprocess.Popen:
    """A compactor for ``spool``, child of this process (it exits once this one is gone). In a
    session of its own, so a signal to the replica's process group does not stop it mid-write
    (and its scheduler group is its own: ``_lower_priority``)."""
    os.makedirs(spool, exist_ok=True)
    policy = policy or Policy()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.Popen(
        [sys.executable, "-m", "maas.capture_compactor", "--spool", spool, "--registry", registry_root,
         "--model", model, "--parent", str(os.getpid()), *policy.args()],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env, start_new_session=True)


@dataclass(frozen=True)
class Policy:
    """When the compactor works. Every ``interval_s`` it looks at the machine: it compacts when at
    least ``idle_pct`` of the CPU time went unused (its own use counted as unused), when the
    oldest spool file has waited ``max_delay_s``, or when the spool holds half of
    ``max_spool_bytes`` (so replicas never drop for want of compaction while it waits), and
    stops between batches once none of these holds. On a machine serving flat out, the Parquet
    encoding so waits for a lull instead of taking CPU from requests, up to ``max_delay_s``.
    Up to ``reuse_bytes`` of compacted spool is kept for the writers to write into (``compact``),
    and ``reserve_bytes`` of it is made when it starts (``maas.capture_spool.reserve``)."""

    interval_s: float = 2.0
    batch_bytes: int = 64 << 20
    idle_pct: float = 30.0
    max_delay_s: float = 900.0
    max_spool_bytes: int = 2048 << 20
    reuse_bytes: int = 512 << 20
    reserve_bytes: int = 0

    def args(self) -> list[str]:
        return ["--interval", str(self.interval_s), "--batch-mb", str(self.batch_bytes >> 20),
                "--idle-pct", str(self.idle_pct), "--max-delay", str(self.max_delay_s),
                "--max-spool-mb", str(self.max_spool_bytes >> 20),
                "--reuse-mb", repr(self.reuse_bytes / (1 << 20)),
                "--reserve-mb", repr(self.reserve_bytes / (1 << 20))]


class MachineLoad:
    """The share of CPU time left unused since the last look (``/proc/stat``: idle and iowait
    over all cores), this process's own use counted as unused. A look too soon after the last
    (under ``MIN_TICKS`` of CPU time) gives the last measure, 0 (busy) before the first; where
    there is no ``/proc/stat``, None (unknown)."""

    MIN_TICKS = 20  # 0.1 s of two cores at 100 ticks a second

    def __init__(self, stat: str = "/proc/stat"):
        self.stat = stat
        self._last = self._sample()
        self._measured = 0.0

    def _sample(self) -> tuple[float, float, float] | None:
        try:
            fields = [float(v) for v in Path(self.stat).read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        return sum(fields[:8]), fields[3] + fields[4], time.process_time() * tick

    def unused_pct(self) -> float | None:
        now, last = self._sample(), self._last
        if now is None or last is None:
            return None
        if now[0] - last[0] >= self.MIN_TICKS:
            self._last = now
            self._measured = 100.0 * min(1.0, (now[1] - last[1] + now[2] - last[2]) / (now[0] - last[0]))
        return self._measured


def due(spool: str, policy: Policy, unused_pct: float | None) -> str | None:
    """Why compaction should run now (None: it waits for a lull)."""
    files = spool_files(spool)
    if not files:
        return None
    if unused_pct is None or unused_pct >= policy.idle_pct:
        return "machine idle" if unused_pct is not None else "machine load unknown"
    try:
        oldest = files[0].stat().st_mtime
    except FileNotFoundError:
        return "spool changed"
    if time.time() - oldest >= policy.max_delay_s:
        return f"oldest spool file waited {policy.max_delay_s:.0f} s"
    if spool_bytes(spool) * 2 >= policy.max_spool_bytes:
        return "spool half full"
    return None


def run(spool: str, registry_root: str, model: str, parent: int | None, policy: Policy,
        stop: threading.Event) -> Compacted:
    """Wait for the spool's lock (a standby while another compactor holds it), then compact as
    ``policy`` says until ``stop`` is set or ``parent`` is gone, and then all that is left; the
    blanks kept for reuse go with it (memory is held only while capture runs; a standby that
    takes over keeps them anew)."""
    os.makedirs(spool, exist_ok=True)
    writer = _writer_id()
    totals, load = Compacted(), MachineLoad()
    with open(Path(spool, LOCK), "a+") as lock:
        while not _locked(lock):
            if stop.is_set() or not _alive(parent):
                return totals  # the holder compacts what is left
            _pause(stop, parent, policy.interval_s)
        _reserve(spool, policy, stop, parent)
        load.unused_pct()  # from now on
        while True:
            last = stop.is_set() or not _alive(parent)
            reason = "last pass" if last else due(spool, policy, load.unused_pct())
            if reason is not None:
                _pass(spool, registry_root, model, writer, policy, totals,
                      (lambda: True) if last else (lambda: due(spool, policy, load.unused_pct()) is not None))
            _write_json(Path(spool, STATUS), {
                "pid": os.getpid(), "writer": writer, "at": time.time(),
                "why": reason or "waiting for a lull", "backlog_files": len(spool_files(spool)),
                "backlog_bytes": spool_bytes(spool), "cpu_s": time.process_time(),
                "reusable_bytes": blank_bytes(spool), **asdict(totals)})
            if last:
                drop_blanks(spool)
                return totals
            _pause(stop, parent, policy.interval_s)


def _reserve(spool: str, policy: Policy, stop: threading.Event, parent: int | None) -> None:
    if not policy.reserve_bytes:
        return
    if Path(spool).is_relative_to(memory_root()):  # a memory spool: the others beside it
        drop_orphaned_blanks(memory_root(), spool)
    try:
        reserve(spool, min(policy.reserve_bytes, policy.reuse_bytes),
                keep_going=lambda: not stop.is_set() and _alive(parent))
    except OSError as exc:  # a full /dev/shm: the writers write into new memory, as without
        print(f"maas capture compactor: spool memory not reserved: {exc}", file=sys.stderr, flush=True)


def drop_orphaned_blanks(root: str, mine: str) -> int:
    """Blanks left in other spool folders under ``root`` (``<root>/<registry>/model=<m>``) by a
    compactor killed before it could free them (Ray kills a killed replica's children): freed
    where no compactor holds the folder's lock. Dropping a blank never loses a row (a writer that
    wanted it writes new memory). Returns how many."""
    dropped = 0
    for folder in Path(root).glob("*/model=*"):
        if str(folder) == mine or not blanks(str(folder)):
            continue
        try:
            with open(folder / LOCK, "a+") as lock:
                if _locked(lock):
                    dropped += drop_blanks(str(folder))
        except OSError:
            continue
    return dropped


def _pass(spool: str, registry_root: str, model: str, writer: str, policy: Policy, totals: Compacted,
          keep_going: Callable[[], bool]) -> None:
    try:
        totals.add(compact(spool, registry_root, model, writer, policy.batch_bytes, keep_going=keep_going,
                           reuse_bytes=policy.reuse_bytes))
    except Exception as exc:  # noqa: BLE001 - reported, and the next pass retries
        totals.last_error = f"{type(exc).__name__}: {exc}"[:500]
        print(f"maas capture compactor ({model}): {totals.last_error}", file=sys.stderr, flush=True)


def _pause(stop: threading.Event, parent: int | None, seconds: float) -> None:
    """Until the next pass, a stop, or the parent's end (looked at every half second)."""
    deadline = time.monotonic() + seconds
    while not stop.is_set() and _alive(parent) and time.monotonic() < deadline:
        stop.wait(min(0.5, max(0.0, deadline - time.monotonic())))


def _writer_id() -> str:
    """This compactor's part of its Parquet file names: unique across processes and restarts."""
    return f"c{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _locked(lock: Any) -> bool:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _alive(parent: int | None) -> bool:
    return parent is None or os.getppid() == parent


AUTOGROUP = "/proc/self/autogroup"


def _lower_priority(autogroup: str = AUTOGROUP) -> None:
    """Nice 19, and one pyarrow thread: compaction takes only CPU time that serving leaves.

    Where the kernel shares CPU time between sessions first (``sched_autogroup_enabled``, on in
    most distributions), nice counts only inside a session, and the compactor leads one of its
    own (``start``): at nice 19 alone its group weighed as much as the whole of Ray's. So that
    group is set to nice 19 too (allowed unprivileged: it only lowers priority). Measured while
    it compacted during a saturating 64-row load, serving kept 0.865x this way and 0.863x with
    the compactor in the replica's session instead (docs/serving-on-ray.md): the same, as its
    own CPU is most of the cost; the group's nice bounds its share wherever others compete.
    Only a compactor that leads its session may set the group: run by hand or by cron
    (``--once``, ``external``) the group is the caller's, all of which would go to nice 19.
    Where there is no such file, nice holds."""
    try:
        os.nice(19)
    except OSError:
        pass
    if os.getsid(0) == os.getpid():  # it leads a session of its own: the group is its alone
        try:
            with open(autogroup, "w") as group:
                group.write("19")
        except OSError:  # no autogroups here (a kernel without them, a read-only /proc)
            pass
    import pyarrow as pa

    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)


def compact_if_free(spool: str, registry_root: str, model: str, writer: str,
                    batch_bytes: int = 64 << 20, reuse_bytes: int = 0) -> Compacted | None:
    """One pass in this process, unless a compactor holds the spool (None: it compacts it; two
    at once would write rows twice)."""
    os.makedirs(spool, exist_ok=True)
    with open(Path(spool, LOCK), "a+") as lock:
        if not _locked(lock):
            return None
        return compact(spool, registry_root, model, writer, batch_bytes, reuse_bytes=reuse_bytes)


def _once(spool: str, registry_root: str, model: str, batch_bytes: int) -> int:
    result = compact_if_free(spool, registry_root, model, _writer_id(), batch_bytes)
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
    parser.add_argument("--interval", type=float, default=Policy.interval_s, help="seconds between looks")
    parser.add_argument("--batch-mb", type=int, default=Policy.batch_bytes >> 20,
                        help="most spool held in memory per write")
    parser.add_argument("--idle-pct", type=float, default=Policy.idle_pct,
                        help="compact when this share of the machine's CPU went unused (0: always)")
    parser.add_argument("--max-delay", type=float, default=Policy.max_delay_s,
                        help="... or once the oldest spool file waited this many seconds")
    parser.add_argument("--max-spool-mb", type=int, default=Policy.max_spool_bytes >> 20,
                        help="... or once the spool holds half of this")
    parser.add_argument("--reuse-mb", type=float, default=Policy.reuse_bytes / (1 << 20),
                        help="keep up to this much compacted spool for the writers to write into")
    parser.add_argument("--reserve-mb", type=float, default=0.0,
                        help="... and make this much of it when it starts (a memory spool)")
    parser.add_argument("--once", action="store_true", help="one pass now, without waiting for the lock")
    args = parser.parse_args(argv)
    _lower_priority()
    if args.once:
        return _once(args.spool, args.registry, args.model, args.batch_mb << 20)
    policy = Policy(args.interval, args.batch_mb << 20, args.idle_pct, args.max_delay,
                    args.max_spool_mb << 20, round(args.reuse_mb * (1 << 20)),
                    round(args.reserve_mb * (1 << 20)))
    run(args.spool, args.registry, args.model, args.parent, policy, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
