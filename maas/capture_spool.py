"""The capture spool: what a serving replica writes for its captured requests, cheaply, before
they become Parquet (``maas.capture_compactor`` turns spool files into the layout ``maas.capture``
describes, in a process of its own at the lowest CPU priority).

Why a spool: Parquet encoding costs ~70-150 us of CPU per 64-row request (zstd, byte-stream
split, list columns, a file per flush), which in the replica cost a quarter of its 64-row
throughput at 100% capture (bench/serve_load.py --capture). Writing a request's arrays as they are
costs a copy into the page cache, and the encoding moves to CPU time serving does not use.

One spool file per version per flush, named ``<written>-<writer>-<seq>.spool`` (written whole:
a hidden name, then renamed)::

    MAGIC (8 bytes) | header length (8 bytes, little-endian) | header (JSON, UTF-8)
    | inputs: float32 [rows, width], C order (tensor models; text and table inputs are in the header)
    | outputs: float32 [rows, output width], C order

The header names the version, its schema (dtype, input shape, classes) and each request: id,
arrival time, protocol, route, latency and rows. Nothing in it is executed or unpickled.

Where (``spool_place``): ``spool: memory`` (the default) puts it in a private folder in /dev/shm:
writing a 64-row digits request's ~19 KiB there cost ~7 us of CPU against ~30 us on this machine's
ext4 (``docs/serving-on-ray.md``), and under load the disk spool cost the replica ~150 us per
64-row request. A memory spool survives a replica's crash (the compactor or the next replica takes
it), not the machine's; it is held to 1/8 of /dev/shm per model, so that Ray's object store, which
lives there too, keeps its room. ``spool: disk``: under the model's capture folder
(``model=<m>/_spool/``; Hive readers skip ``_`` folders) for a local registry; a local temporary
folder for an object-store registry (Parquet goes to the store).

Reuse: writing into memory the kernel has to find anew can cost far more than writing into memory a
file already holds (on a VM whose host backs guest memory only once touched, new memory faults to
the hypervisor: ``bench/spool_memory.py``, ``docs/serving-on-ray.md``). So the compactor does not
delete a spool file it has compacted: it renames it to a blank (``.<id>.blank``, hidden, not
counted as backlog), up to the setting's ``spool_reuse_mb``, and a writer renames a blank to its
hidden name and writes over it from the start (cutting what is left of the old bytes). The rename
is the claim: two writers never get one blank. A memory spool's compactor also reserves blanks when
it starts (``reserve``: ``rate`` x ``spool_reuse_mb``, at nice 19), so the first writes under load
find held memory too. The compactor deletes the blanks when it exits, so memory is held only while
capture runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from maas.capture import WRITTEN_FORMAT, Sample, as_text, model_dir
from maas.data import DataSchema
from maas.errors import DataError
from maas.storage import is_uri

MAGIC = b"MAASCAP1"
PREFIX = struct.Struct("<8sQ")
SPOOL_DIR = "_spool"
SUFFIX = ".spool"
BLANK = ".blank"
FORMAT = 1


@dataclass(frozen=True)
class SpooledVersion:
    """What the compactor needs of the model that answered: its version and schema (the shape of
    ``maas.serving.model.LoadedModel`` that ``maas.capture.requests_table`` reads)."""

    version: int
    schema: DataSchema


MEMORY_ROOT = "/dev/shm"
MEMORY_SHARE = 8  # a model's memory spool holds at most 1/8 of /dev/shm: Ray's object store is there
MIN_MEMORY_SPOOL = 64 << 20  # a smaller memory spool would drop samples at short bursts: use disk


def spool_dir(registry_root: str, model: str, medium: str = "disk") -> str:
    """The spool folder of ``model``'s captured traffic on this machine (``medium``: the
    setting's ``spool``; see ``spool_place`` for when memory is not used)."""
    digest = hashlib.blake2b(registry_root.encode(), digest_size=8).hexdigest()
    if medium == "memory":
        return f"{memory_root()}/{digest}/model={model}"
    if not is_uri(registry_root):
        return f"{model_dir(registry_root, model)}/{SPOOL_DIR}"
    return f"{tempfile.gettempdir()}/maas-capture-spool/{digest}/model={model}"


@dataclass(frozen=True)
class SpoolPlace:
    directory: str
    max_bytes: int
    medium: str  # where it is: "memory" or "disk"
    note: str = ""  # why it is not where the settings asked, or why smaller


def spool_place(registry_root: str, model: str, medium: str, max_bytes: int) -> SpoolPlace:
    """Where ``model``'s spool goes and how much it may hold: in memory when asked and /dev/shm is
    there, ours and big enough (at most 1/8 of it), else on disk (with the reason)."""
    if medium == "memory":
        room, why = _memory_room()
        if room >= MIN_MEMORY_SPOOL:
            capped = min(max_bytes, room)
            note = (f"memory spool held to {capped >> 20} MiB (1/{MEMORY_SHARE} of {MEMORY_ROOT})"
                    if capped < max_bytes else "")
            return SpoolPlace(spool_dir(registry_root, model, "memory"), capped, "memory", note)
        why = why or f"1/{MEMORY_SHARE} of {MEMORY_ROOT} is {room >> 20} MiB, under {MIN_MEMORY_SPOOL >> 20}"
        return SpoolPlace(spool_dir(registry_root, model), max_bytes, "disk", f"spool on disk: {why}")
    return SpoolPlace(spool_dir(registry_root, model), max_bytes, "disk")


def memory_root() -> str:
    """This user's folder of memory spools (``<root>/<registry digest>/model=<m>`` beneath it)."""
    return f"{MEMORY_ROOT}/maas-capture-spool-{os.getuid()}"


def _memory_room() -> tuple[int, str]:
    """(bytes a model's memory spool may hold, why none): the private folder is made here (0700);
    one that another user owns or others can read is refused (captured traffic is user data)."""
    root = memory_root()
    try:
        os.makedirs(root, mode=0o700, exist_ok=True)
        info = os.stat(root)
        if info.st_uid != os.getuid() or info.st_mode & 0o077:
            mode = f"{info.st_mode & 0o777:o}"
            return 0, f"{root} is not private to this user (owner {info.st_uid}, mode {mode})"
        fs = os.statvfs(root)
    except OSError as exc:
        return 0, f"{MEMORY_ROOT} is not usable: {exc}"
    return fs.f_blocks * fs.f_frsize // MEMORY_SHARE, ""


def spool_files(directory: str) -> list[Path]:
    """Finished spool files, oldest first (names start with the time they were written)."""
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    return sorted((Path(e.path) for e in entries if e.name.endswith(SUFFIX) and not e.name.startswith(".")
                   and e.is_file()), key=lambda p: p.name)


def spool_bytes(directory: str) -> int:
    """Bytes waiting in the spool (finished files and ones being written)."""
    try:
        return sum(e.stat().st_size for e in os.scandir(directory) if e.is_file() and SUFFIX in e.name)
    except FileNotFoundError:
        return 0


def _entries(directory: str) -> Iterator[os.DirEntry]:
    """What ``directory`` holds, as the folder lists it; nothing when it is not there."""
    try:
        with os.scandir(directory) as entries:
            yield from entries
    except FileNotFoundError:
        return


def _blank_entries(directory: str) -> Iterator[os.DirEntry]:
    """The blanks in ``directory`` as the folder lists them (a writer claims one without a stat)."""
    return (entry for entry in _entries(directory) if entry.name.endswith(BLANK))


def blanks(directory: str) -> list[tuple[str, int]]:
    """The compacted spool files kept for reuse: [(path, bytes)]."""
    found = []
    for entry in _blank_entries(directory):
        try:
            found.append((entry.path, entry.stat().st_size))
        except FileNotFoundError:  # claimed meanwhile
            continue
    return found


def blank_bytes(directory: str) -> int:
    """Bytes the blanks hold (memory kept for reuse, not backlog)."""
    return sum(size for _, size in blanks(directory))


def recycle(path: str | Path, directory: str, keep_bytes: int, held: int) -> int:
    """A compacted spool file: kept as a blank for a writer to reuse while the blanks, holding
    ``held`` bytes before it, stay within ``keep_bytes``; else deleted. Returns what they hold
    after it."""
    try:
        size = os.stat(path).st_size
        if held + size <= keep_bytes:
            os.replace(path, f"{directory}/.{uuid.uuid4().hex}{BLANK}")
            return held + size
        os.unlink(path)
    except FileNotFoundError:
        pass
    return held


RESERVE_FILE = 4 << 20  # a reserved blank: about one flush of a small model (a larger write grows it)
RESERVING = ".reserving"  # a blank being made


def reserve(directory: str, total_bytes: int, keep_going: Callable[[], bool] = lambda: True) -> int:
    """Blanks of ``RESERVE_FILE`` bytes, written with zeros (so the memory is really held: a
    preallocation alone need not touch it), until the blanks hold ``total_bytes``; returns the
    bytes added. What a writer then writes lands in held memory from its first flush on."""
    held = blank_bytes(directory)
    added, zeros = 0, bytes(1 << 20)
    while held + added + RESERVE_FILE <= total_bytes and keep_going():
        hidden = f"{directory}/.{uuid.uuid4().hex}{RESERVING}"
        try:
            fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                _write_all(fd, [zeros] * (RESERVE_FILE // len(zeros)))
            finally:
                os.close(fd)
            os.rename(hidden, f"{directory}/.{uuid.uuid4().hex}{BLANK}")
        except BaseException:
            Path(hidden).unlink(missing_ok=True)
            raise
        added += RESERVE_FILE
    return added


def drop_blanks(directory: str) -> int:
    """Delete every blank (capture ending, or the spool moved): the memory goes back; and any
    half-made one a compactor killed while reserving left. Returns how many blanks."""
    dropped = 0
    for path, _ in blanks(directory):
        try:
            os.unlink(path)
            dropped += 1
        except FileNotFoundError:  # a writer claimed it
            pass
    for half_made in Path(directory).glob(f".*{RESERVING}"):
        half_made.unlink(missing_ok=True)
    return dropped


# ---------------------------------------------------------------------------------------------
# Writing (a replica's capture writer, in a thread)


class SpoolView:
    """A writer's picture of its spool, listed at most once every ``relist_s``: its blanks and how
    many bytes it holds. Under load a writer flushes many times a second while the spool grows to
    hundreds of files (the compactor waits for a lull); listing and sizing the folder at every
    flush cost the replica ~7 us a 64-row request (bench/profile_replica.py). Between listings the
    size counts what this writer wrote on top (what the compactor took meanwhile, or other
    replicas on the machine wrote, shows at the next listing); at the limit it is counted anew."""

    SMALL_FOLDER = 64  # entries: listed at every flush that finds no blank left

    def __init__(self, directory: str, relist_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.directory, self.relist_s, self._clock = directory, relist_s, clock
        self._blanks: list[str] = []
        self._blanks_listed = self._sized = float("-inf")
        self._relist_waits = False  # the last listing found no blank in a folder of many files
        self._bytes = 0

    def holds_at_least(self, limit: int) -> bool:
        """Whether the spool holds ``limit`` bytes (``max_spool_mb``: a full spool drops)."""
        now = self._clock()
        if now - self._sized >= self.relist_s or self._bytes >= limit:
            self._bytes, self._sized = spool_bytes(self.directory), now
        return self._bytes >= limit

    def wrote(self, nbytes: int) -> None:
        self._bytes += nbytes

    def claim_blank(self, hidden: str) -> bool:
        """Rename a blank (see the module's docstring) to ``hidden``, from the last listing; the
        rename is the claim (another writer's may win a blank: the next is tried). Lists anew once
        the listing is used up: at once when it found some (the compactor is recycling) or the
        folder is small, else once ``relist_s`` has passed. False when none is left."""
        while True:
            if not self._blanks:
                now = self._clock()
                if self._relist_waits and now - self._blanks_listed < self.relist_s:
                    return False
                self._list_blanks(now)
                if not self._blanks:
                    return False
            try:
                os.rename(self._blanks.pop(), hidden)
                return True
            except FileNotFoundError:  # another writer's, or dropped
                continue

    def _list_blanks(self, now: float) -> None:
        entries = list(_entries(self.directory))
        self._blanks = [entry.path for entry in entries if entry.name.endswith(BLANK)]
        self._blanks_listed = now
        self._relist_waits = not self._blanks and len(entries) > self.SMALL_FOLDER


def write_spool(directory: str, samples: Iterable[Sample], writer: str, next_seq: Callable[[], int],
                view: SpoolView | None = None) -> list[tuple[str, int, int]]:
    """One spool file per version of ``samples``; [(path, version, rows)]. ``view``: the
    writer's picture of the spool (blanks claimed from it, bytes written counted in it); without
    one, the folder is listed afresh."""
    groups: dict[int, list[Sample]] = {}
    for sample in samples:
        if len(sample.inputs):  # a request without rows has nothing to keep
            groups.setdefault(sample.model.version, []).append(sample)
    os.makedirs(directory, exist_ok=True)
    written = datetime.now(timezone.utc).strftime(WRITTEN_FORMAT)
    files = []
    for version, group in sorted(groups.items()):
        path = f"{directory}/{written}-{writer}-{next_seq():06d}{SUFFIX}"
        rows = _write_file(path, group, view)
        files.append((path, version, rows))
    return files


def _write_file(path: str, samples: Sequence[Sample], view: SpoolView | None = None) -> int:
    """Header, then each request's arrays as they lie in memory (no concatenation: the kernel
    copies them into the page cache, in one ``writev`` call, so the writer thread gives the
    event loop the GIL back once a flush, not once an array); written under a hidden name and
    renamed, so a reader never sees part of a file."""
    schema = samples[0].model.schema
    tensor = not schema.string_input
    inputs = [np.ascontiguousarray(s.inputs, dtype=np.float32).reshape(len(s.inputs), -1) if tensor
              else np.asarray(s.inputs, dtype=object).reshape(len(s.inputs), -1) for s in samples]
    outputs = [np.ascontiguousarray(s.outputs, dtype=np.float32).reshape(len(s.outputs), -1) for s in samples]
    header = {
        "format": FORMAT, "version": samples[0].model.version,
        "schema": {"dtype": schema.dtype, "input_shape": [int(d) for d in schema.input_shape],
                   "classes": [c if isinstance(c, (int, str)) else str(c) for c in schema.classes]},
        "requests": [[s.request_id, s.time, s.protocol, s.route, s.latency_s, len(s.inputs)]
                     for s in samples],
        "input_width": int(inputs[0].shape[1]) if tensor else None,
        "output_width": int(outputs[0].shape[1]),
    }
    if not tensor:
        header["texts"] = [[as_text(v) for v in row] for x in inputs for row in x]
    encoded = json.dumps(header, separators=(",", ":")).encode()
    directory, name = os.path.split(path)
    hidden = f"{directory}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
    buffers = [PREFIX.pack(MAGIC, len(encoded)), encoded, *(inputs if tensor else []), *outputs]
    size = sum(b.nbytes if isinstance(b, np.ndarray) else len(b) for b in buffers)
    try:
        reused = (view or SpoolView(directory)).claim_blank(hidden)
        fd = os.open(hidden, os.O_WRONLY | (0 if reused else os.O_CREAT | os.O_EXCL), 0o600)
        try:
            _write_all(fd, buffers)
            if reused:  # what is left of the blank's old bytes goes
                os.ftruncate(fd, size)
        finally:
            os.close(fd)
        os.replace(hidden, path)
    except BaseException:
        Path(hidden).unlink(missing_ok=True)
        raise
    if view is not None:
        view.wrote(size)
    return sum(len(x) for x in inputs)


def _write_all(fd: int, buffers: list[Any]) -> None:
    """Every byte of ``buffers`` (bytes or C-contiguous arrays), in as few ``writev`` calls as
    the system allows (a call may write less than asked: the rest goes in the next)."""
    views = [memoryview(b).cast("B") for b in buffers]
    limit = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
    first = 0
    while first < len(views):
        written = os.writev(fd, views[first:first + limit])
        if written == 0:
            raise OSError(f"capture spool: nothing written of {sum(len(v) for v in views[first:])} bytes")
        while written and first < len(views):
            size = len(views[first])
            if written < size:
                views[first] = views[first][written:]
                written = 0
            else:
                written -= size
                first += 1
        while first < len(views) and not len(views[first]):  # empty arrays: nothing to write
            first += 1


# ---------------------------------------------------------------------------------------------
# Reading (the compactor)


def read_spool(path: str | Path) -> list[Sample]:
    """A spool file's requests as ``Sample``s (their arrays: views of the file's bytes). A file
    that is not one, or whose sizes do not add up, raises ``DataError``."""
    data = Path(path).read_bytes()
    if len(data) < PREFIX.size:
        raise DataError(f"capture spool file {path} is truncated: {len(data)} bytes")
    magic, length = PREFIX.unpack_from(data)
    if magic != MAGIC or PREFIX.size + length > len(data):
        raise DataError(f"{path} is not a capture spool file (bad magic or header length)")
    try:
        header = json.loads(data[PREFIX.size:PREFIX.size + length])
        schema = DataSchema(tuple(header["schema"]["input_shape"]), list(header["schema"]["classes"]),
                            header["schema"]["dtype"])
        requests, width = header["requests"], int(header["output_width"])
        model = SpooledVersion(int(header["version"]), schema)
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"capture spool file {path} has an unreadable header: {exc}") from exc
    if header.get("format") != FORMAT:
        raise DataError(f"capture spool file {path} has format {header.get('format')!r}, expected {FORMAT}")
    total = sum(int(r[5]) for r in requests)
    tensor = header["input_width"] is not None
    input_width = int(header["input_width"]) if tensor else 0
    body = memoryview(data)[PREFIX.size + length:]
    expected = 4 * total * (input_width + width)
    if len(body) != expected:
        raise DataError(f"capture spool file {path} holds {len(body)} bytes of arrays, expected {expected}")
    floats = np.frombuffer(body, dtype=np.float32)
    inputs = (floats[:total * input_width].reshape(total, input_width) if tensor
              else np.array(header["texts"], dtype=object).reshape(total, -1))
    outputs = floats[total * input_width:].reshape(total, width)
    samples, start = [], 0
    for request_id, arrived, protocol, route, latency_s, rows in requests:
        end = start + int(rows)
        samples.append(Sample(float(arrived), request_id, model, protocol, route, inputs[start:end],
                              outputs[start:end], float(latency_s)))
        start = end
    return samples
