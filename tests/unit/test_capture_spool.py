"""The capture spool (``maas.capture_spool``): what a replica writes is what the compactor reads,
for tensor, text and table models; a file that is not whole or not one is refused, never read as
rows; the spool's bound drops and counts, and the request path never waits for it."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import numpy as np
import pytest

from maas.capture import Sample, model_dir
from maas.capture_spool import (
    MAGIC,
    PREFIX,
    SpoolView,
    blanks,
    drop_blanks,
    read_spool,
    recycle,
    spool_bytes,
    spool_dir,
    spool_files,
    write_spool,
)
from maas.data import DataSchema
from maas.errors import DataError
from maas.serving.capture import Capture
from maas.serving.model import LoadedModel
from maas.serving.settings import CaptureSettings

IMAGE = DataSchema(input_shape=(2, 2), classes=[3, 7])
TEXT = DataSchema(input_shape=(), classes=["negative", "positive"], dtype="string")
TABLE = DataSchema(input_shape=(2,), classes=["no", "yes"], dtype="table", feature_names=["age", "city"])


def sample(request_id: str, schema: DataSchema, inputs: np.ndarray, version: int = 1) -> Sample:
    outputs = np.random.default_rng(len(request_id)).random((len(inputs), 2)).astype(np.float32)
    return Sample(1.7e9 + len(request_id), request_id, LoadedModel("m", version, schema, None, {}), "v2",
                  "label/stable", inputs, outputs, 0.0125)


def test_a_spool_file_reads_back_as_the_requests_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    samples = [sample(f"r{i}", IMAGE, rng.random((i + 1, 2, 2)).astype(np.float32), version=1 + i % 2)
               for i in range(5)]
    files = write_spool(str(tmp_path), samples, "w", itertools.count(1).__next__)
    assert [(v, rows) for _, v, rows in files] == [(1, 1 + 3 + 5), (2, 2 + 4)]  # a file per version
    back = [s for path in spool_files(str(tmp_path)) for s in read_spool(path)]
    assert [s.request_id for s in back] == ["r0", "r2", "r4", "r1", "r3"]
    by_id = {s.request_id: s for s in back}
    for original in samples:
        got = by_id[original.request_id]
        assert np.array_equal(got.inputs, original.inputs.reshape(len(original.inputs), -1))
        assert np.array_equal(got.outputs, original.outputs)
        assert (got.time, got.protocol, got.route) == (original.time, "v2", "label/stable")
        assert got.latency_s == 0.0125
        assert got.model.version == original.model.version and got.model.schema == IMAGE
    assert not list(tmp_path.glob(".*"))  # no hidden file left behind


def test_text_and_table_inputs_travel_in_the_header(tmp_path: Path) -> None:
    write_spool(str(tmp_path), [sample("t", TEXT, np.array(["so good", b"bad"], dtype=object))], "w",
                itertools.count(1).__next__)
    write_spool(str(tmp_path), [sample("c", TABLE, np.array([["41.0", "x"], ["nan", "y"]], dtype=object))],
                "w", itertools.count(2).__next__)
    text, table = (read_spool(path)[0] for path in spool_files(str(tmp_path)))
    assert text.inputs.reshape(-1).tolist() == ["so good", "bad"] and text.model.schema.is_text
    assert table.inputs.tolist() == [["41.0", "x"], ["nan", "y"]] and table.model.schema.is_table


@pytest.mark.parametrize("damage", ["truncated", "magic", "header", "short arrays", "empty"])
def test_a_damaged_spool_file_is_refused(tmp_path: Path, damage: str) -> None:
    [(path, _, _)] = write_spool(str(tmp_path), [sample("r", IMAGE, np.ones((3, 2, 2), np.float32))], "w",
                                 itertools.count(1).__next__)
    data = Path(path).read_bytes()
    header_end = PREFIX.size + PREFIX.unpack_from(data)[1]
    crafted = {"truncated": data[:-1], "magic": b"NOTMAAS!" + data[8:],
               "header": data[:20] + b"{" + data[21:], "short arrays": data[:header_end + 8],
               "empty": b""}[damage]
    Path(path).write_bytes(crafted)
    with pytest.raises(DataError):
        read_spool(path)
    assert data.startswith(MAGIC)


def test_the_spool_lives_under_the_model_or_in_a_local_folder_for_an_object_store() -> None:
    assert spool_dir("/reg", "m") == f"{model_dir('/reg', 'm')}/_spool"
    local = spool_dir("s3://bucket/reg", "m")
    assert "://" not in local and local.endswith("/model=m") and local != spool_dir("s3://other/reg", "m")


def test_a_memory_spool_is_private_and_holds_an_eighth_of_the_memory_filesystem(tmp_path: Path) -> None:
    import os

    import maas.capture_spool as spool

    place = spool.spool_place("/reg", "m", "memory", 1 << 50)
    root = Path(spool.MEMORY_ROOT) / f"maas-capture-spool-{os.getuid()}"
    assert place.medium == "memory" and Path(place.directory).is_relative_to(root)
    assert root.stat().st_mode & 0o777 == 0o700  # captured traffic is user data
    stats = os.statvfs(root)
    assert place.max_bytes == stats.f_blocks * stats.f_frsize // 8 and "1/8" in place.note
    assert spool.spool_place("/reg", "m", "memory", 1 << 20).max_bytes == 1 << 20  # the setting, when smaller
    assert spool.spool_place("/other", "m", "memory", 1 << 20).directory != place.directory


@pytest.mark.parametrize("problem", ["not private", "missing", "too small"])
def test_a_memory_spool_that_cannot_be_had_safely_goes_to_disk_and_says_why(problem: str, tmp_path: Path,
                                                                            monkeypatch) -> None:
    import os

    import maas.capture_spool as spool

    if problem == "not private":  # someone made the folder first, readable by others
        (Path(spool.MEMORY_ROOT) / f"maas-capture-spool-{os.getuid()}").mkdir(mode=0o755)
        os.chmod(Path(spool.MEMORY_ROOT) / f"maas-capture-spool-{os.getuid()}", 0o755)
    elif problem == "missing":
        monkeypatch.setattr(spool, "MEMORY_ROOT", str(tmp_path / "a-file"))
        (tmp_path / "a-file").write_text("not a folder")
    else:
        monkeypatch.setattr(spool, "MEMORY_SHARE", 1 << 40)
    place = spool.spool_place(str(tmp_path / "reg"), "m", "memory", 1 << 30)
    assert place.medium == "disk" and place.directory == spool_dir(str(tmp_path / "reg"), "m")
    assert place.max_bytes == 1 << 30
    why = {"not private": "not private", "missing": "not usable", "too small": "under 64"}[problem]
    assert why in place.note


def test_moving_the_spool_live_compacts_what_waited_in_the_old_one(tmp_path: Path) -> None:
    """spool: memory -> disk while requests wait in memory: nothing lost, each row once."""
    from datetime import datetime, timedelta, timezone

    from maas.capture import read_captured

    async def scenario() -> None:
        root = str(tmp_path / "reg")
        capture = Capture("m", root, CaptureSettings(rate=1.0, compaction="external"), "r")
        model = LoadedModel("m", 1, IMAGE, None, {})
        rows = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
        capture.offer("a", model, "v1", "default", rows, np.ones((3, 2), np.float32), 0.0)
        await capture.flush()
        in_memory = capture.spool
        assert len(spool_files(in_memory)) == 1 and "maas-capture-spool" in in_memory
        capture.apply(CaptureSettings(rate=1.0, compaction="inline", spool="disk"))
        assert capture.spool == spool_dir(root, "m") and capture.moved_from == [in_memory]
        capture.offer("b", model, "v1", "default", rows + 100, np.ones((3, 2), np.float32), 0.0)
        await capture.flush()
        assert not spool_files(in_memory) and capture.moved_from == [] and not spool_files(capture.spool)
        now = datetime.now(timezone.utc)
        back = read_captured(root, "m", now - timedelta(days=365 * 60), now + timedelta(hours=1))
        assert sorted(set(back.request_ids)) == ["a", "b"] and len(back.inputs) == 6

    asyncio.run(scenario())


def test_a_full_spool_drops_and_counts_and_never_makes_a_request_wait(tmp_path: Path) -> None:
    async def scenario() -> None:
        settings = CaptureSettings(rate=1.0, max_spool_mb=1, compaction="external")  # nothing empties it
        capture = Capture("m", str(tmp_path), settings, "r")
        rows = np.ones((2048, 2, 2), np.float32)  # 32 KiB of inputs a request
        for round_ in range(40):
            capture.offer(f"r{round_}", LoadedModel("m", 1, IMAGE, None, {}), "v1", "default", rows,
                          np.ones((2048, 2), np.float32), 0.0)
            await capture.flush()
        assert spool_bytes(capture.spool) < (1 << 20) + 2 * 48 * 1024  # past the bound by one write at most
        state = capture.state()
        assert state["dropped_spool_full"] > 0 and state["dropped_requests"] == state["dropped_spool_full"]
        assert state["sampled_requests"] == 40 and state["written_rows"] + state["dropped_rows"] == 40 * 2048
        assert state["spool"]["files"] == len(spool_files(capture.spool)) == state["written_rows"] // 2048

    asyncio.run(scenario())


def test_a_write_cut_short_by_the_system_goes_on_where_it_stopped(tmp_path: Path, monkeypatch) -> None:
    import os

    real = os.writev

    def stingy(fd: int, buffers: list) -> int:  # as a signal or a full pipe may: a few bytes at a time
        return real(fd, [bytes(memoryview(buffers[0])[:7])])

    monkeypatch.setattr(os, "writev", stingy)
    rows = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    write_spool(str(tmp_path), [sample("r", IMAGE, rows), sample("s", IMAGE, rows[:0])], "w",
                itertools.count(1).__next__)
    monkeypatch.undo()
    back = read_spool(spool_files(str(tmp_path))[0])
    assert np.array_equal(back[0].inputs, rows.reshape(3, 4)) and len(back) == 1  # no rows: nothing kept


# --- reusing compacted spool files ---------------------------------------------------------------

def _spool(directory: Path, request_id: str, rows: int, seq: int) -> str:
    inputs = np.arange(rows * 4, dtype=np.float32).reshape(rows, 2, 2) + seq
    [(path, _, _)] = write_spool(str(directory), [sample(request_id, IMAGE, inputs)], "w", lambda: seq)
    return path


def test_a_writer_writes_over_a_kept_blank_and_cuts_what_is_left_of_it(tmp_path: Path) -> None:
    """The memory a compacted file held is written again (the same file: no new memory), and a
    blank larger than the new write reads back as exactly the new requests."""
    import os

    big = _spool(tmp_path, "old", 500, 1)
    inode, old_size = os.stat(big).st_ino, os.stat(big).st_size
    recycle(big, str(tmp_path), 1 << 30, 0)
    assert spool_files(str(tmp_path)) == [] and spool_bytes(str(tmp_path)) == 0  # not backlog
    assert [size for _, size in blanks(str(tmp_path))] == [old_size]
    small = _spool(tmp_path, "new", 3, 2)
    assert os.stat(small).st_ino == inode and os.stat(small).st_size < old_size
    [back] = read_spool(small)
    assert back.request_id == "new" and np.array_equal(back.inputs, np.arange(12).reshape(3, 4) + 2)
    assert blanks(str(tmp_path)) == [] and not list(tmp_path.glob(".*"))
    recycle(small, str(tmp_path), 1 << 30, 0)  # a blank smaller than the next write grows
    grown = _spool(tmp_path, "grown", 700, 3)
    assert os.stat(grown).st_ino == inode
    assert np.array_equal(read_spool(grown)[0].inputs, np.arange(2800).reshape(700, 4) + 3)


def test_blanks_are_kept_up_to_the_cap_the_rest_deleted_and_all_dropped_at_the_end(tmp_path: Path) -> None:
    files = [_spool(tmp_path, f"r{i}", 100, i + 1) for i in range(3)]
    size = Path(files[0]).stat().st_size
    kept = 0
    for path in files:
        kept = recycle(path, str(tmp_path), 2 * size, kept)
    assert kept == 2 * size and len(blanks(str(tmp_path))) == 2 and spool_files(str(tmp_path)) == []
    assert not any(Path(p).exists() for p in files)
    (tmp_path / ".half-made.reserving").write_bytes(bytes(10))  # a compactor killed while reserving
    assert drop_blanks(str(tmp_path)) == 2 and blanks(str(tmp_path)) == []
    assert not (tmp_path / ".half-made.reserving").exists()
    recycle(_spool(tmp_path, "none", 10, 9), str(tmp_path), 0, 0)  # spool_reuse_mb 0: deleted at once
    assert list(tmp_path.iterdir()) == []


def test_a_blank_another_writer_took_first_is_skipped(tmp_path: Path, monkeypatch) -> None:
    import os

    import maas.capture_spool as spool

    for path in [_spool(tmp_path, f"r{i}", 10, i + 1) for i in range(2)]:
        recycle(path, str(tmp_path), 1 << 30, 0)
    inodes = {os.stat(path).st_ino for path, _ in blanks(str(tmp_path))}
    real, raced = os.rename, []

    def beaten_once(source: str, target: str) -> None:
        if not raced:  # another replica's writer renames this blank first
            raced.append(source)
            real(source, f"{tmp_path}/taken-by-another")
            raise FileNotFoundError(source)
        real(source, target)

    monkeypatch.setattr(spool.os, "rename", beaten_once)
    path = _spool(tmp_path, "mine", 5, 3)
    monkeypatch.undo()
    assert os.stat(path).st_ino in inodes - {os.stat(f"{tmp_path}/taken-by-another").st_ino}
    assert read_spool(path)[0].request_id == "mine" and blanks(str(tmp_path)) == []


def test_inline_compaction_reuses_its_spool_files_and_frees_them_when_capture_ends(tmp_path: Path) -> None:
    import os

    async def scenario() -> None:
        settings = CaptureSettings(rate=1.0, compaction="inline", spool="disk")
        capture = Capture("m", str(tmp_path), settings, "r")
        model = LoadedModel("m", 1, IMAGE, None, {})
        rows = np.ones((64, 2, 2), np.float32)
        capture.offer("a", model, "v1", "default", rows, np.ones((64, 2), np.float32), 0.0)
        await capture.flush()
        [(blank, _)] = blanks(capture.spool)
        inode = os.stat(blank).st_ino
        assert capture.state()["spool"]["reusable_bytes"] == os.stat(blank).st_size
        capture.offer("b", model, "v1", "default", rows, np.ones((64, 2), np.float32), 0.0)
        await capture.flush()
        assert [os.stat(path).st_ino for path, _ in blanks(capture.spool)] == [inode]  # written, compacted
        await capture.close()
        assert blanks(capture.spool) == [] and spool_files(capture.spool) == []
        assert capture.state()["written_rows"] == 128

    asyncio.run(scenario())


def _listings(monkeypatch) -> list[str]:
    import os

    import maas.capture_spool as spool

    listed, real = [], os.scandir

    def counted(path):
        listed.append(path)
        return real(path)

    monkeypatch.setattr(spool.os, "scandir", counted)
    return listed


def test_a_writer_lists_a_big_spool_for_blanks_once_a_second_at_most(tmp_path: Path, monkeypatch) -> None:
    """Under load the spool holds hundreds of files: a flush finding no blank does not list it
    again within relist_s; blanks the compactor recycles are found at the next listing; a
    listing that found blanks is used up before the next."""
    for i in range(SpoolView.SMALL_FOLDER + 1):  # a backlog the compactor has not taken yet
        (tmp_path / f"{i:04d}.spool").write_bytes(b"x")
    now = [100.0]
    view = SpoolView(str(tmp_path), relist_s=1.0, clock=lambda: now[0])
    listed = _listings(monkeypatch)
    assert not view.claim_blank(f"{tmp_path}/.a.tmp") and not view.claim_blank(f"{tmp_path}/.b.tmp")
    assert len(listed) == 1
    for name in ("one", "two"):
        (tmp_path / f".{name}.blank").write_bytes(b"old")
    now[0] += 0.5
    assert not view.claim_blank(f"{tmp_path}/.c.tmp") and len(listed) == 1  # not listed yet
    now[0] += 0.5
    assert view.claim_blank(f"{tmp_path}/.d.tmp") and view.claim_blank(f"{tmp_path}/.e.tmp")
    assert len(listed) == 2 and (tmp_path / ".d.tmp").read_bytes() == b"old"
    assert not (tmp_path / ".one.blank").exists() and not (tmp_path / ".two.blank").exists()
    (tmp_path / ".three.blank").write_bytes(b"old")  # recycled meanwhile: found at once, since the
    assert view.claim_blank(f"{tmp_path}/.f.tmp") and len(listed) == 3  # last listing found some


def test_a_writers_view_of_the_spool_size_counts_its_writes_and_recounts_at_the_limit(tmp_path: Path,
                                                                                      monkeypatch) -> None:
    (tmp_path / "a.spool").write_bytes(bytes(600))
    now = [100.0]
    view = SpoolView(str(tmp_path), relist_s=1.0, clock=lambda: now[0])
    listed = _listings(monkeypatch)
    assert not view.holds_at_least(1000) and len(listed) == 1
    view.wrote(300)
    assert not view.holds_at_least(1000) and len(listed) == 1  # 900, counted, not listed
    view.wrote(300)
    (tmp_path / "a.spool").unlink()  # the compactor took it meanwhile: the recount sees room
    assert not view.holds_at_least(1000) and len(listed) == 2
    (tmp_path / "b.spool").write_bytes(bytes(1200))  # another replica's write: seen at the next listing
    assert not view.holds_at_least(1000)
    now[0] += 1.0
    assert view.holds_at_least(1000) and len(listed) == 3
