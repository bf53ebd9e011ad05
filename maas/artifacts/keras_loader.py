"""Load a verified ``.keras`` model from memory: bytes that passed the content-hash (and
signature) checks, decrypted if they were encrypted at rest, are checked against the allow-list
and written to TensorFlow's in-memory filesystem (``ram://``), loaded and removed. Nothing of the
model touches disk, and a file swapped in the registry after the checks is never the one Keras
reads. tf_keras extracts a text model's assets (its vocabulary) to a temporary directory; that
directory is put on a memory-backed filesystem (``/dev/shm``) when the machine has one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from maas.artifacts.keras_safety import check_format, check_keras_archive

MEMORY_TMP = "/dev/shm"
_TEMPDIR_LOCK = threading.Lock()  # tempfile.tempdir is process-wide


def load_keras_bytes(content: bytes, filename: str, what: str) -> Any:
    check_format(filename, what)
    check_keras_archive(content, what)
    from maas.tfkeras import load_model, tensorflow

    gfile = tensorflow().io.gfile
    directory = f"ram://maas-load/{uuid.uuid4().hex}"
    path = f"{directory}/model.keras"
    gfile.makedirs(directory)
    try:
        with gfile.GFile(path, "wb") as out:
            out.write(content)
        with _assets_in_memory():
            return load_model(path, compile=False)
    finally:
        gfile.rmtree(directory)


@contextlib.contextmanager
def _assets_in_memory() -> Iterator[None]:
    if not os.path.isdir(MEMORY_TMP) or not os.access(MEMORY_TMP, os.W_OK):
        yield
        return
    with _TEMPDIR_LOCK:
        private = tempfile.mkdtemp(prefix="maas-load-", dir=MEMORY_TMP)
        previous, tempfile.tempdir = tempfile.tempdir, private
        try:
            yield
        finally:
            tempfile.tempdir = previous
            shutil.rmtree(private, ignore_errors=True)
