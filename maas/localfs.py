"""A local directory tree behind the few ``pyarrow.fs`` calls that the registry, the key store and
the audit log make, without importing pyarrow.

Why: those three are on every serving replica's path, and ``import pyarrow.fs`` alone adds about
35 MiB of resident memory to a process. A replica that serves ONNX Runtime versions from a local
registry needs nothing else from pyarrow (``bench/serve_runtimes.py`` measures its memory). A
URI (``s3://``, ``gs://``, ...) still gets pyarrow's own filesystem (``maas.storage.files_for``),
and Parquet and data set code keeps using ``maas.storage.filesystem_for``.

Only what those callers use is here, with pyarrow's semantics: a missing path's info has type
``NotFound`` (no exception), listing a missing directory raises ``FileNotFoundError`` unless
``allow_not_found``, ``open_output_stream`` does not create parent directories, and
``create_dir`` is happy when the directory exists.
"""

from __future__ import annotations

import enum
import os
import shutil
from dataclasses import dataclass
from typing import IO, Any


class FileType(enum.IntEnum):
    """pyarrow.fs.FileType's values (an IntEnum too), so either side's infos compare equal."""

    NotFound = 0
    Unknown = 1
    File = 2
    Directory = 3


@dataclass(frozen=True)
class FileInfo:
    path: str
    type: FileType
    size: int | None = None  # None for a directory or a missing path, as in pyarrow
    mtime_ns: int | None = None

    @property
    def base_name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]


class LocalFiles:
    """Plain-path file operations, shaped like ``pyarrow.fs.LocalFileSystem``'s."""

    type_name = "local"  # as pyarrow's LocalFileSystem says

    def get_file_info(self, path: str) -> FileInfo:
        try:
            stat = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return FileInfo(path, FileType.NotFound)
        if os.path.isdir(path):
            return FileInfo(path, FileType.Directory, None, stat.st_mtime_ns)
        return FileInfo(path, FileType.File, stat.st_size, stat.st_mtime_ns)

    def entries(self, base: str, recursive: bool = False, allow_not_found: bool = False) -> list[FileInfo]:
        """What ``get_file_info(FileSelector(base, ...))`` gives: every entry under ``base``,
        directories included, with paths that start with ``base``."""
        if not os.path.isdir(base):
            if allow_not_found and not os.path.exists(base):
                return []
            raise FileNotFoundError(f"directory '{base}' does not exist")
        found = []
        for entry in os.scandir(base):
            path = f"{base.rstrip('/')}/{entry.name}"
            found.append(self.get_file_info(path))
            if recursive and entry.is_dir(follow_symlinks=False):
                found.extend(self.entries(path, recursive=True, allow_not_found=True))
        return found

    def open_input_stream(self, path: str) -> IO[bytes]:
        return open(path, "rb")

    def open_output_stream(self, path: str) -> IO[bytes]:
        return open(path, "wb")

    def create_dir(self, path: str, recursive: bool = True) -> None:
        if recursive:
            os.makedirs(path, exist_ok=True)
        elif not os.path.isdir(path):
            os.mkdir(path)

    def move(self, source: str, destination: str) -> None:
        os.replace(source, destination)

    def copy_tree(self, source: str, destination: str) -> None:
        shutil.copytree(source, destination, dirs_exist_ok=True)


def list_entries(fs: Any, base: str, recursive: bool = False,
                 allow_not_found: bool = False) -> list[Any]:
    """Entries under ``base`` on ``LocalFiles`` or any pyarrow filesystem alike."""
    if isinstance(fs, LocalFiles):
        return fs.entries(base, recursive=recursive, allow_not_found=allow_not_found)
    import pyarrow.fs as pafs

    return fs.get_file_info(pafs.FileSelector(base, recursive=recursive, allow_not_found=allow_not_found))
