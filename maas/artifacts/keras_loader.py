"""Load a verified ``.keras`` model: bytes that passed the content-hash (and signature) checks
are checked against the allow-list, written to a private temporary directory, loaded, and
deleted. Loading from that private copy, not from the registry, means a file swapped in the
registry after the checks is never the one Keras reads."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from maas.artifacts.keras_safety import check_format, check_keras_archive


def load_keras_bytes(content: bytes, filename: str, what: str) -> Any:
    check_format(filename, what)
    check_keras_archive(content, what)
    from maas.tfkeras import load_model

    with tempfile.TemporaryDirectory(prefix="maas-load-") as private:  # mode 0700
        path = Path(private, "model.keras")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(content)
        return load_model(str(path), compile=False)
