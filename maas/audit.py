"""A tamper-evident audit trail: append-only JSON lines under the registry's storage, so every
node writes to one place.

Files are ``<registry>/.maas/audit/<YYYY-MM-DD>/<writer>.jsonl``: one per writing process per
day (rotated daily), because a hash chain needs one writer per file. Each entry carries the hash
of the previous entry in its file (``prev``) and its own (``hash``, sha256 over ``prev`` and the
entry), so editing or deleting a line breaks the chain at that point: ``python -m maas audit
verify`` finds it. (Cutting the last lines of a file leaves a shorter valid chain; ship the files
to write-once storage for that.) Never a key; payloads only when a Serve app turns them on
(``audit_payloads``): key ids, model, version, status, rows.

Actions: ``model.published``, ``label.moved``, ``version.loaded`` / ``version.refused``,
``serve.settings_changed``, ``key.created`` / ``key.revoked``, ``admin.read`` / ``admin.refused``,
``prediction``, and ``rollout.promoted`` / ``rollout.rolled_back`` (a canary decision, with its
reason and the window's numbers; written by the replica that decided: ``ROLLOUT_ACTIONS``).
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import json
import os
import socket
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from maas.localfs import FileType, list_entries
from maas.storage import files_for, is_uri

AUDIT_DIR = ".maas/audit"
ROLLOUT_ACTIONS = ("rollout.promoted", "rollout.rolled_back")  # maas.serving.host: canary decisions
GENESIS = "0" * 64


def audit_root(registry_root: str) -> str:
    return f"{registry_root.rstrip('/')}/{AUDIT_DIR}"


def _canonical(entry: dict[str, Any]) -> str:
    """The text an entry's hash covers: ``json.dumps`` with sorted keys and no spaces. For the
    flat entries serving writes by the thousand, orjson gives the very same bytes several times
    faster (checked by ``_orjson_text``; the tests compare both on every kind of value)."""
    fast = _orjson_text(entry)
    if fast is not None:
        return fast
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), default=str)


def _orjson_text(entry: dict[str, Any]) -> str | None:
    """orjson's text for ``entry`` where it is byte for byte what ``json.dumps`` writes, else None.

    They agree on flat entries of strings, None, booleans, 64-bit ints and floats in repr's
    fixed-point range, as long as the text is printable ASCII: json escapes anything else as
    \\uXXXX (DEL included) where orjson writes UTF-8. So only the values' types are checked one
    by one (cheap: serving writes an entry per audited prediction) and strings, keys included,
    are checked on the output in one pass. Nested values, NaN, numpy scalars, big ints: None."""
    for value in entry.values():
        kind = type(value)
        if kind is str or kind is bool or value is None:
            continue
        if kind is float:
            if not (value == 0.0 or 1e-4 <= abs(value) < 1e16):  # NaN fails both
                return None
        elif kind is not int or not -(2**63) <= value < 2**63:
            return None
    try:
        text = orjson.dumps(entry, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # a key that is not a string
        return None
    if not text.isascii() or b"\x7f" in text:
        return None
    return text.decode()


def _entry_hash(prev: str, entry: dict[str, Any]) -> str:
    return _hash(prev, _canonical(entry))


def _hash(prev: str, body: str) -> str:
    return hashlib.sha256((prev + body).encode()).hexdigest()


def _line(prev: str, entry: dict[str, Any]) -> tuple[str, str]:
    """The entry's line and hash from one serialisation: the canonical text it is hashed over,
    with the hash added as its last key (serving writes a line per audited prediction, so a
    second json.dumps per entry was a measurable share of the audit trail's cost)."""
    body = _canonical(entry)
    digest = _hash(prev, body)
    return (f'{body[:-1]},"hash":"{digest}"}}' if len(body) > 2 else f'{{"hash":"{digest}"}}'), digest


def payload(body: bytes | None, limit: int) -> dict[str, Any] | None:
    """A request or response body as an audit field: UTF-8 text as it came (JSON bodies), other
    bytes (binary tensor data) base64-encoded; bodies past ``limit`` bytes are cut there and
    say so, so that one huge request cannot swell the trail."""
    if body is None:
        return None
    kept = body[:limit]
    field: dict[str, Any] = {"bytes": len(body)}
    try:
        field["text"] = kept.decode("utf-8")
    except UnicodeDecodeError:
        field["base64"] = base64.b64encode(kept).decode("ascii")
    if len(body) > limit:
        field["truncated_at"] = limit
    return field


def actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


_LOGS: dict[str, AuditLog] = {}
_LOGS_LOCK = threading.Lock()


def audit_log(directory: str) -> AuditLog:
    """The one writer of this process for ``directory`` (``audit_root(registry)``): two writers
    with the same file would fork its chain."""
    with _LOGS_LOCK:
        if directory not in _LOGS:
            _LOGS[directory] = AuditLog(directory)
        return _LOGS[directory]


def record(directory: str, action: str, **fields: Any) -> None:
    """Append one entry; a failure to write is logged, never raised: the audited operation has
    already happened, and a read-only store must not stop serving."""
    import logging

    try:
        audit_log(directory).append(action, actor=actor(), **fields)
    except OSError as exc:
        logging.getLogger("maas.audit").warning("audit entry %s not written to %s: %s", action,
                                                directory, exc)


class AuditLog:
    """Appends entries for one writer (this process); thread-safe. Use ``audit_log()``."""

    def __init__(self, directory: str, writer: str | None = None):
        self.root = directory
        self.writer = writer or f"{socket.gethostname()}-{os.getpid()}"
        self.fs, self.inner_root = files_for(self.root)
        self._lock = threading.Lock()
        self._day: str | None = None
        self._prev = GENESIS

    def append(self, action: str, **fields: Any) -> None:
        self.extend([{"action": action, **fields}])

    def extend(self, entries: list[dict[str, Any]]) -> None:
        """Several entries in one write (serving buffers predictions and writes once a second)."""
        if not entries:
            return
        with self._lock:
            now = datetime.now(timezone.utc)
            path = self._file(now.strftime("%Y-%m-%d"))
            stamp = now.isoformat(timespec="milliseconds")  # once per write, not per entry
            lines = []
            for fields in entries:
                entry = {"time": fields.pop("time", stamp), "writer": self.writer, **fields,
                         "prev": self._prev}
                line, self._prev = _line(self._prev, entry)
                lines.append(line)
            self._write(path, ("\n".join(lines) + "\n").encode())

    def _file(self, day: str) -> str:
        if day != self._day:  # a new day: a new file and a new chain (or continue ours)
            self._day = day
            path = f"{self.inner_root}/{day}/{self.writer}.jsonl"
            last = _last_line(self.fs, path)
            self._prev = json.loads(last)["hash"] if last else GENESIS
        return f"{self.inner_root}/{self._day}/{self.writer}.jsonl"

    def _write(self, path: str, data: bytes) -> None:
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        if not is_uri(self.root):
            with open(path, "ab") as out:  # O_APPEND: lines are only ever added
                out.write(data)
            return
        previous = b""  # object stores cannot append: rewrite the day's file of this writer
        if self.fs.get_file_info(path).size:
            with self.fs.open_input_stream(path) as stream:
                previous = stream.read()
        with self.fs.open_output_stream(path) as out:
            out.write(previous + data)


def _last_line(fs: Any, path: str) -> str | None:
    try:
        with fs.open_input_stream(path) as stream:
            lines = stream.read().decode().strip().splitlines()
    except FileNotFoundError:
        return None
    return lines[-1] if lines else None


def _files(registry_root: str) -> Iterator[tuple[str, list[str]]]:
    # the same filesystem as the writer's: local trails need no pyarrow (the admin route that
    # verifies the trail runs in a serving replica)
    fs, inner = files_for(audit_root(registry_root))
    if fs.get_file_info(inner).type == FileType.NotFound:
        return
    infos = list_entries(fs, inner, recursive=True)
    for info in sorted(infos, key=lambda i: i.path):
        if info.type == FileType.File and info.path.endswith(".jsonl"):
            with fs.open_input_stream(info.path) as stream:
                yield info.path, stream.read().decode().splitlines()


def verify(registry_root: str) -> tuple[int, list[str]]:
    """(entries checked, problems): each problem names the file and line where the chain breaks."""
    checked, problems = 0, []
    for path, lines in _files(registry_root):
        prev = GENESIS  # every file starts a chain: deleting its first line shows too
        for number, line in enumerate(lines, 1):
            where = f"{Path(path).parent.name}/{Path(path).name} line {number}"
            try:
                entry = json.loads(line)
                stated = entry.pop("hash")
            except (ValueError, KeyError):
                problems.append(f"{where}: not an audit entry")
                break
            if entry.get("prev") != prev:
                problems.append(f"{where}: the previous entry was deleted or changed")
                break
            if _entry_hash(prev, entry) != stated:
                problems.append(f"{where}: the entry was edited")
                break
            prev, checked = stated, checked + 1
    return checked, problems


def entries(registry_root: str, model: str | None = None, since: str | None = None,
            action: str | None = None) -> list[dict[str, Any]]:
    """Every entry, oldest first, filtered by model, time (ISO, inclusive) and action prefix."""
    found = [json.loads(line) for _, lines in _files(registry_root) for line in lines if line.strip()]
    found = [e for e in found if (model is None or e.get("model") == model)
             and (since is None or e.get("time", "") >= since)
             and (action is None or e.get("action", "").startswith(action))]
    return sorted(found, key=lambda e: e.get("time", ""))
