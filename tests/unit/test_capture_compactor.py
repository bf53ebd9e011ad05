"""The capture compactor (``maas.capture_compactor``): spool -> Parquet with every row exactly once,
after crafted crashes at each step; damaged spool files set aside; and as a real process: one
compacts while another waits, the waiting one takes over when the first is killed, and one whose
replica is gone compacts what is left and exits."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from maas.capture import Sample, list_files, read_captured
from maas.capture_compactor import (
    BAD_DIR,
    CLAIM,
    LOCK,
    STATUS,
    MachineLoad,
    Policy,
    compact,
    drop_orphaned_blanks,
    due,
    start,
)
from maas.capture_spool import RESERVE_FILE, blanks, recycle, reserve, spool_dir, spool_files, write_spool
from maas.data import DataSchema
from maas.serving.model import LoadedModel
from tests.conftest import REPO

MODEL = "digits"
SCHEMA = DataSchema(input_shape=(3,), classes=["a", "b"])
SEQ = itertools.count(1)
FAST = Policy(interval_s=0.2, idle_pct=0)  # looks often, compacts whatever the machine's load


def spool_requests(root: Path, first: int, count: int, version: int = 1) -> list[str]:
    """``count`` requests of 2 rows spooled as one file; their ids."""
    ids = [f"req-{i}" for i in range(first, first + count)]
    samples = [Sample(time.time(), rid, LoadedModel(MODEL, version, SCHEMA, None, {}), "v1", "default",
                      np.full((2, 3), i, np.float32), np.full((2, 2), 0.5, np.float32), 0.001)
               for i, rid in enumerate(ids, start=first)]
    write_spool(spool_dir(str(root), MODEL), samples, "replica", SEQ.__next__)
    return ids


def captured_ids(root: Path) -> list[str]:
    now = datetime.now(timezone.utc)
    got = read_captured(str(root), MODEL, now - timedelta(hours=2), now + timedelta(minutes=5))
    return sorted(got.request_ids)


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_compaction_writes_each_row_once_in_fewer_larger_files(tmp_path: Path) -> None:
    sent = [rid for flush in range(6)
            for rid in spool_requests(tmp_path, flush * 10, 10, version=1 + flush % 2)]
    spool = spool_dir(str(tmp_path), MODEL)
    assert len(spool_files(spool)) == 6
    done = compact(spool, str(tmp_path), MODEL, "c1")
    # one Parquet file per version, not one per spool file
    assert (done.rows, done.spool_files, done.parquet_files, done.bad_files) == (120, 6, 2, 0)
    assert spool_files(spool) == [] and not Path(spool, CLAIM).exists()
    assert captured_ids(tmp_path) == sorted(rid for rid in sent for _ in range(2))
    assert compact(spool, str(tmp_path), MODEL, "c1").rows == 0  # nothing twice


def test_a_crash_before_the_claim_is_done_leaves_no_partial_file(tmp_path: Path) -> None:
    sent = spool_requests(tmp_path, 0, 5)
    spool = spool_dir(str(tmp_path), MODEL)
    prefix = "20260101T000000000000Z-dead-"
    hour = Path(tmp_path, ".maas/capture/model=digits/version=1/hour=2026-01-01T00")
    partial = hour / f"{prefix}000001.parquet"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"PAR1 half a file")  # what a compactor killed mid-write leaves
    Path(spool, CLAIM).write_text(json.dumps({"prefix": prefix, "spool": [p.name for p in spool_files(spool)],
                                              "done": False}))
    assert compact(spool, str(tmp_path), MODEL, "c2").rows == 10
    assert not partial.exists()
    assert captured_ids(tmp_path) == sorted(rid for rid in sent for _ in range(2))


def test_a_crash_after_the_claim_is_done_writes_nothing_twice(tmp_path: Path) -> None:
    spool = spool_dir(str(tmp_path), MODEL)
    sent = spool_requests(tmp_path, 0, 5)
    names = [p.name for p in spool_files(spool)]
    kept = {name: Path(spool, name).read_bytes() for name in names}
    first = compact(spool, str(tmp_path), MODEL, "c3")
    for name, data in kept.items():  # killed after the Parquet was in place, before the deletes
        Path(spool, name).write_bytes(data)
    Path(spool, CLAIM).write_text(json.dumps({"prefix": "x-", "spool": names, "done": True}))
    assert first.rows == 10 and compact(spool, str(tmp_path), MODEL, "c3").rows == 0
    assert captured_ids(tmp_path) == sorted(rid for rid in sent for _ in range(2))


def test_a_damaged_spool_file_is_set_aside_and_the_rest_compacted(tmp_path: Path) -> None:
    spool = spool_dir(str(tmp_path), MODEL)
    good = spool_requests(tmp_path, 0, 3)
    spool_requests(tmp_path, 100, 3)
    damaged = spool_files(spool)[-1]
    damaged.write_bytes(damaged.read_bytes()[:-5])  # a disk that filled mid-write
    done = compact(spool, str(tmp_path), MODEL, "c4")
    assert (done.rows, done.bad_files) == (6, 1) and "expected" in done.last_error
    assert Path(spool, BAD_DIR, damaged.name).exists() and spool_files(spool) == []
    assert captured_ids(tmp_path) == sorted(rid for rid in good for _ in range(2))


# --- the process --------------------------------------------------------------------------------

def _status(spool: str) -> dict:
    try:
        return json.loads(Path(spool, STATUS).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture
def compactors(tmp_path: Path):
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_one_compactor_works_a_standby_takes_over_when_it_is_killed(tmp_path: Path, compactors: list) -> None:
    spool = spool_dir(str(tmp_path), MODEL)
    first = start(spool, str(tmp_path), MODEL, FAST)
    compactors.append(first)
    sent = spool_requests(tmp_path, 0, 4)
    wait_for(lambda: len(captured_ids(tmp_path)) == 8)
    standby = start(spool, str(tmp_path), MODEL, FAST)
    compactors.append(standby)
    time.sleep(1.5)
    assert _status(spool)["pid"] == first.pid  # the standby waits for the lock
    first.send_signal(signal.SIGKILL)
    first.wait()
    sent += spool_requests(tmp_path, 10, 4)
    wait_for(lambda: len(captured_ids(tmp_path)) == 16)
    assert _status(spool)["pid"] == standby.pid
    assert captured_ids(tmp_path) == sorted(rid for rid in sent for _ in range(2))
    standby.send_signal(signal.SIGTERM)  # a replica turning capture off: last pass, then exit
    assert standby.wait(timeout=30) == 0
    once = subprocess.run([sys.executable, "-m", "maas.capture_compactor", "--spool", spool, "--registry",
                           str(tmp_path), "--model", MODEL, "--once"], env=_env(), capture_output=True,
                          text=True, timeout=60)
    assert once.returncode == 0 and json.loads(once.stdout)["rows"] == 0


def test_a_compactor_whose_replica_is_gone_compacts_what_is_left_and_exits(tmp_path: Path) -> None:
    spool = spool_dir(str(tmp_path), MODEL)
    sent = spool_requests(tmp_path, 0, 5)
    # a "replica" that starts a compactor (interval: an hour) and dies at once
    replica = subprocess.run(
        [sys.executable, "-c", "from maas.capture_compactor import Policy, start; "
         f"print(start({spool!r}, {str(tmp_path)!r}, {MODEL!r}, Policy(interval_s=3600)).pid)"],
        env=_env(), capture_output=True, text=True, timeout=60, check=True)
    pid = int(replica.stdout)
    wait_for(lambda: not Path(f"/proc/{pid}").exists()
             or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z")  # exited (a zombie: nobody reaps)
    assert captured_ids(tmp_path) == sorted(rid for rid in sent for _ in range(2))
    assert spool_files(spool) == [] and len(list_files(str(tmp_path), MODEL)) == 1


def test_a_replica_starts_its_compactor_and_stops_it_when_capture_turns_off(tmp_path: Path) -> None:
    import asyncio

    from maas.serving.capture import Capture
    from maas.serving.settings import CaptureSettings

    async def scenario() -> None:
        capture = Capture(MODEL, str(tmp_path), CaptureSettings(rate=1.0, compact_idle_pct=0), "replica")
        capture.start()
        model = LoadedModel(MODEL, 1, SCHEMA, None, {})
        for i in range(3):
            capture.offer(f"a{i}", model, "v1", "default", np.ones((2, 3), np.float32), np.ones((2, 2)), 0.0)
        await capture.flush()
        compactor = capture.compactor
        assert compactor is not None and capture.state()["spool"]["compactor_pid"] == compactor.pid
        await asyncio.to_thread(wait_for, lambda: len(captured_ids(tmp_path)) == 6)
        capture.offer("last", model, "v1", "default", np.ones((1, 3), np.float32), np.ones((1, 2)), 0.0)
        await capture.close()  # settings turned capture off: spooled, then the compactor's last pass
        assert await asyncio.to_thread(compactor.wait, 30) == 0
        assert captured_ids(tmp_path) == ["a0", "a0", "a1", "a1", "a2", "a2", "last"]
        assert capture.state()["spool"]["compactor"]["rows"] >= 1

    asyncio.run(scenario())


def test_a_compactor_keeps_spool_files_for_reuse_up_to_its_cap_and_frees_them_as_it_exits(
        tmp_path: Path, compactors: list) -> None:
    spool = spool_dir(str(tmp_path), MODEL)
    spool_requests(tmp_path, 0, 4)
    size = spool_files(spool)[0].stat().st_size
    cap = size + size // 2  # room for one file (their sizes differ by a byte or two: the times)
    compactor = start(spool, str(tmp_path), MODEL, Policy(interval_s=0.2, idle_pct=0, reuse_bytes=cap))
    compactors.append(compactor)
    wait_for(lambda: len(captured_ids(tmp_path)) == 8)
    wait_for(lambda: _status(spool).get("reusable_bytes") == size)
    [(blank, _)] = blanks(spool)
    inode = os.stat(blank).st_ino
    sent = [rid for first in (10, 20) for rid in spool_requests(tmp_path, first, 4)]  # 2 files, 1 blank
    assert sorted(os.stat(p).st_ino == inode for p in spool_files(spool)) == [False, True]
    wait_for(lambda: len(captured_ids(tmp_path)) == 24)
    wait_for(lambda: _status(spool).get("spool_files") == 3)
    assert len(blanks(spool)) == 1  # the cap: one kept, one deleted
    compactor.send_signal(signal.SIGTERM)
    assert compactor.wait(timeout=30) == 0
    assert blanks(spool) == [] and spool_files(spool) == []
    assert sorted(set(captured_ids(tmp_path)) - {f"req-{i}" for i in range(4)}) == sorted(sent)


def test_a_compactor_reserves_zeroed_spool_memory_as_it_starts_and_a_write_lands_in_it(
        tmp_path: Path, compactors: list) -> None:
    spool = spool_dir(str(tmp_path), MODEL)
    policy = Policy(interval_s=0.2, idle_pct=0, reuse_bytes=3 * RESERVE_FILE, reserve_bytes=2 * RESERVE_FILE)
    compactor = start(spool, str(tmp_path), MODEL, policy)
    compactors.append(compactor)
    wait_for(lambda: _status(spool).get("reusable_bytes") == 2 * RESERVE_FILE)
    reserved = {os.stat(path).st_ino for path, _ in blanks(spool)}
    assert len(reserved) == 2 and all(not any(Path(p).read_bytes()) for p, _ in blanks(spool))
    sent = spool_requests(tmp_path, 0, 3)
    assert os.stat(spool_files(spool)[0]).st_ino in reserved
    wait_for(lambda: len(captured_ids(tmp_path)) == 6)
    assert captured_ids(tmp_path) == sorted(rid for rid in sent for _ in range(2))
    compactor.send_signal(signal.SIGTERM)
    assert compactor.wait(timeout=30) == 0 and blanks(spool) == []


def test_reserving_stops_when_told_and_counts_blanks_already_there(tmp_path: Path) -> None:
    assert reserve(str(tmp_path), 3 * RESERVE_FILE, keep_going=lambda: False) == 0
    assert reserve(str(tmp_path), RESERVE_FILE + RESERVE_FILE // 2) == RESERVE_FILE  # whole files only
    assert reserve(str(tmp_path), 2 * RESERVE_FILE) == RESERVE_FILE and len(blanks(str(tmp_path))) == 2
    assert not list(tmp_path.glob("*.reserving"))


def test_blanks_a_killed_compactor_left_are_freed_unless_their_folder_is_held(tmp_path: Path) -> None:
    import fcntl

    folders = {name: tmp_path / name / f"model={name}" for name in ("orphan", "held", "mine")}
    for folder in folders.values():
        folder.mkdir(parents=True)
        spool_requests(folder, 0, 1)  # a spool file, kept as a blank in the folder
        [path] = spool_files(spool_dir(str(folder), MODEL))
        recycle(path, str(folder), 1 << 30, 0)
    with open(folders["held"] / LOCK, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert drop_orphaned_blanks(str(tmp_path), str(folders["mine"])) == 1
    assert [bool(blanks(str(folders[n]))) for n in ("orphan", "held", "mine")] == [False, True, True]


# --- when it works ------------------------------------------------------------------------------

def test_compaction_waits_for_a_lull_up_to_a_delay_or_half_a_spool(tmp_path: Path) -> None:
    spool = spool_dir(str(tmp_path), MODEL)
    policy = Policy(idle_pct=30, max_delay_s=60, max_spool_bytes=1 << 30)
    assert due(spool, policy, 100.0) is None  # nothing spooled
    spool_requests(tmp_path, 0, 3)
    assert due(spool, policy, 45.0) == "machine idle"
    assert due(spool, policy, None) == "machine load unknown"
    assert due(spool, policy, 5.0) is None  # busy, and the spool is fresh and small
    oldest = spool_files(spool)[0]
    os.utime(oldest, (time.time() - 61, time.time() - 61))
    assert "waited 60 s" in due(spool, policy, 5.0)
    os.utime(oldest, None)
    small = Policy(idle_pct=30, max_spool_bytes=2 * oldest.stat().st_size)
    assert due(spool, small, 5.0) == "spool half full"


def test_machine_load_counts_idle_and_iowait_over_all_cores(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3\n")
    load = MachineLoad(str(stat))
    stat.write_text("cpu  250 0 250 800 100 0 0 0 0 0\ncpu0 1 2 3\n")  # 300 busy, 100 idle of 400
    assert load.unused_pct() == pytest.approx(25.0, abs=1.0)  # (plus this process's few ticks)
    stat.write_text("cpu  251 0 250 800 100 0 0 0 0 0\n")  # one tick later: too soon, the last measure
    assert load.unused_pct() == pytest.approx(25.0, abs=1.0)
    assert MachineLoad(str(stat)).unused_pct() == 0.0  # no measure yet: taken as busy
    assert MachineLoad(str(tmp_path / "missing")).unused_pct() is None


def test_a_compactor_defers_while_the_machine_is_busy_and_compacts_once_it_is_not(tmp_path: Path,
                                                                                compactors: list) -> None:
    spool = spool_dir(str(tmp_path), MODEL)
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
               for _ in range(os.cpu_count() or 2)]
    try:
        time.sleep(0.5)
        compactor = start(spool, str(tmp_path), MODEL, Policy(interval_s=0.3, idle_pct=30))
        compactors.append(compactor)
        sent = spool_requests(tmp_path, 0, 4)
        wait_for(lambda: _status(spool).get("why") == "waiting for a lull")
        time.sleep(1.5)
        assert captured_ids(tmp_path) == [] and _status(spool)["backlog_files"] == 1
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    wait_for(lambda: len(captured_ids(tmp_path)) == 8)
    assert captured_ids(tmp_path) == sorted(rid for rid in sent for _ in range(2))
    assert _status(spool)["why"] in ("machine idle", "waiting for a lull")


def test_a_compactor_is_low_priority_for_the_whole_machine_in_a_session_of_its_own(
        tmp_path: Path, compactors: list) -> None:
    """A session of its own (a signal to the replica's process group must not stop it mid-write)
    is a scheduler group of its own where the kernel has autogroups, and nice counts only inside
    a group: the group is set to nice 19 as well, and the test's own group is left alone."""
    spool = spool_dir(str(tmp_path), MODEL)
    compactor = start(spool, str(tmp_path), MODEL, FAST)
    compactors.append(compactor)
    wait_for(lambda: _status(spool).get("pid") == compactor.pid)
    assert os.getpriority(os.PRIO_PROCESS, compactor.pid) == 19
    assert os.getsid(compactor.pid) == compactor.pid != os.getsid(0)
    if Path(f"/proc/{compactor.pid}/autogroup").exists():
        assert _group_nice(compactor.pid) == "19"
        assert _group_nice("self") != "19"  # ours untouched


def _group_nice(pid: int | str) -> str:
    """The nice of a process's scheduler group; "" for the boot session's default group, which the
    kernel prints as nothing (it is the root group, which cannot be reniced: CI's test process is
    in it)."""
    words = Path(f"/proc/{pid}/autogroup").read_text().split()
    return words[-1] if words else ""


LOWER = ("import os, sys; sys.path.insert(0, sys.argv[1]); from maas.capture_compactor import "
         "_lower_priority; _lower_priority(*sys.argv[2:]); print(os.getpriority(os.PRIO_PROCESS, 0))")


def test_lowering_priority_goes_on_where_there_is_no_autogroup(tmp_path: Path) -> None:
    missing = str(tmp_path / "no" / "autogroup")
    done = subprocess.run([sys.executable, "-c", LOWER, str(REPO), missing], capture_output=True, text=True,
                          timeout=60, env=_env(), start_new_session=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "19"


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="no scheduler autogroups here")
def test_a_compactor_run_by_hand_leaves_the_shells_scheduler_group_alone(tmp_path: Path) -> None:
    """``--once`` from a shell or cron shares the caller's session: setting that group to nice 19
    would lower everything the user runs there (it did, to the shell this was found from)."""
    before = Path("/proc/self/autogroup").read_text()
    spool = spool_dir(str(tmp_path), MODEL)
    spool_requests(tmp_path, 0, 1)
    once = subprocess.run([sys.executable, "-m", "maas.capture_compactor", "--spool", spool, "--registry",
                           str(tmp_path), "--model", MODEL, "--once"], env=_env(), capture_output=True,
                          text=True, timeout=60)
    assert once.returncode == 0, once.stderr
    assert json.loads(once.stdout)["rows"] == 2
    assert Path("/proc/self/autogroup").read_text() == before
    lowered = subprocess.run([sys.executable, "-c", LOWER, str(REPO)], capture_output=True, text=True,
                             timeout=60, env=_env())
    assert lowered.stdout.split()[-1] == "19"  # nice, which counts inside the session, still is
    assert Path("/proc/self/autogroup").read_text() == before
