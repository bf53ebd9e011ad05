"""Local paths and filesystem URIs (``s3://``, ``gs://``, ...) handled one way everywhere."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any


def is_uri(location: str) -> bool:
    """A filesystem URI such as ``s3://bucket/x``, as opposed to a local path."""
    return "://" in location


def absolute(location: str) -> str:
    """A URI as it is; a local path expanded (``~``) and made absolute. Ray jobs run in a copy of
    the working directory, so a relative path would write somewhere that vanishes with the job."""
    return location if is_uri(location) else str(Path(location).expanduser().resolve())


def files_for(location: str) -> tuple[Any, str]:
    """(filesystem, path inside it) for small-file reads and writes (registry, keys, audit): a
    local path gets ``maas.localfs.LocalFiles``, which needs no pyarrow (serving replicas stay
    lean); a URI gets pyarrow's filesystem for it."""
    if is_uri(location):
        return filesystem_for(location)
    from maas.localfs import LocalFiles

    return LocalFiles(), location


def filesystem_for(location: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) for a local path or any filesystem URI."""
    import pyarrow.fs as pafs

    if is_uri(location):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), location


def replace_file(fs: Any, path: str, body: bytes) -> None:
    """Write ``body`` as the whole of ``path`` (inside ``fs``, from ``files_for`` or
    ``filesystem_for``) so that a reader, or a process killed mid-write, never meets half a file:
    an object store's upload appears only once complete; a local file is written beside it and
    renamed over it."""
    if getattr(fs, "type_name", "") != "local":
        with fs.open_output_stream(path) as out:
            out.write(body)
        return
    temp = f"{path}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(temp, "wb") as out:
            out.write(body)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):  # the write failed: no stray temporary file
            os.unlink(temp)

