"""Model registry: ``<root>/<name>/<version>/`` (the TensorFlow Serving layout) on any filesystem.

A version directory holds the model file(s) and ``metadata.json``. Publishing is atomic:

* on a local filesystem, files are staged under ``<root>/<name>/.staging/``, the next number is
  claimed under ``<root>/<name>/.claims/`` and the finished directory is renamed into place, so a
  numbered directory appears whole or not at all (TensorFlow Serving, which reads every numbered
  directory, never meets an empty or half-written one);
* on object stores (``s3://``, ``gs://``), where rename is a copy, ``metadata.json`` is written
  last and is the commit marker: a version without it is invisible to readers.

Every reader also checks a version's files against the content hash in its metadata.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from maas.errors import IntegrityError, RegistryError, StorageError
from maas.localfs import FileType, LocalFiles, list_entries
from maas.schema import NAME_PATTERN as MODEL_NAME_PATTERN
from maas.storage import absolute, files_for, is_uri, replace_file

METADATA_FILE = "metadata.json"
SERVED_FILE = "served.json"  # <root>/<name>/served.json: versions that loaded in a replica, newest first
ROLLOUT_DIR = ".rollout"  # <root>/<name>/.rollout/<rollout id>/<rank>.json: one file per canary decision
STAGING_DIR = ".staging"
CLAIMS_DIR = ".claims"  # <root>/<name>/.claims/<n>: a number taken by a publisher (an empty directory)
STALE_STAGING_S = 24 * 3600  # a staging directory this old belongs to a publisher that died
NAME_PATTERN = re.compile(MODEL_NAME_PATTERN)


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    uri: str
    metadata: dict[str, Any]

    @property
    def content_hash(self) -> str:
        return self.metadata["content_hash"]


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or ".." in name:
        raise RegistryError(
            f"invalid model name {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


def hash_files(files: dict[str, bytes] | Iterable[tuple[str, bytes]]) -> str:
    """sha256 over (relative path, content) pairs in path order: renames change it too."""
    items = sorted(files.items() if isinstance(files, dict) else files)
    digest = hashlib.sha256()
    for rel_path, content in items:
        digest.update(rel_path.encode() + b"\0")
        digest.update(hashlib.sha256(content).digest())
    return "sha256:" + digest.hexdigest()


def hash_directory(path: str | Path) -> str:
    return hash_files(_read_tree(Path(path)))


def _read_tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != METADATA_FILE
    }


def _write_synced(path: Path, content: bytes) -> None:
    """Write and fsync: a version the registry calls published survives a crash of the machine,
    not only of the process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        out.write(content)
        out.flush()
        os.fsync(out.fileno())


def _sync_directory(path: Path) -> None:
    """fsync a directory, so a rename inside it is on disk too."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class Registry:
    def __init__(self, root: str, filesystem: Any = None, signer: Any = None,
                 encryption_key: Any = None):
        """``signer`` (``maas.artifacts.signing.Signer``) signs every version published; by
        default the key named by ``$MAAS_SIGNING_KEY``, if set (else versions are unsigned).
        ``encryption_key`` (``maas.artifacts.encryption.MasterKey`` or a KMS wrapper) encrypts
        the files of every version published; by default the key file named by
        ``$MAAS_MASTER_KEY_FILE``, if set (else files are stored as they are)."""
        self.root_uri = root
        self._signer = signer
        self._encryption_key = encryption_key
        if filesystem is not None:  # an explicit pyarrow filesystem (tests, custom credentials)
            self.fs, self.root = filesystem, root
        else:  # a local root without pyarrow (maas.localfs): serving replicas stay lean
            self.fs, self.root = files_for(absolute(root))
        self.local = isinstance(self.fs, LocalFiles)

    # --- reading --------------------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def _exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != FileType.NotFound

    def list_models(self) -> list[str]:
        if not self._exists(self.root):
            return []
        infos = list_entries(self.fs, self.root)
        names = [i.base_name for i in infos if i.type == FileType.Directory]
        return sorted(n for n in names if NAME_PATTERN.match(n) and self.versions(n))

    def versions(self, name: str) -> list[int]:
        """Published versions, ascending. Staging leftovers and uncommitted copies are skipped."""
        validate_name(name)
        numbers = self._numbered_dirs(name)
        return sorted(v for v in numbers if self._exists(self._path(name, str(v), METADATA_FILE)))

    def _numbered_dirs(self, name: str, under: str | None = None) -> list[int]:
        """Every numeric directory, committed or not (an object-store upload that never committed,
        a claim of a local publisher that died, an empty claim left by an older registry)."""
        base = self._path(name, under) if under else self._path(name)
        if not self._exists(base):
            return []
        infos = list_entries(self.fs, base)
        return [int(i.base_name) for i in infos
                if i.type == FileType.Directory and i.base_name.isdigit()]

    def _next_number(self, name: str) -> int:
        taken = self._numbered_dirs(name) + (self._numbered_dirs(name, CLAIMS_DIR) if self.local else [])
        return max(taken, default=0) + 1

    def get(self, name: str, version: int | str | None = None) -> ModelVersion:
        """``version``: a number, ``"latest"`` / None, or a label stored in metadata."""
        available = self.versions(name)
        if not available:
            known = ", ".join(self.list_models()) or "none"
            raise RegistryError(f"model '{name}' is not in the registry at {self.root_uri} (models: {known})")
        number = self._resolve(name, version, available)
        metadata = self._read_metadata(name, number)
        return ModelVersion(name, number, self._path(name, str(number)), metadata)

    def _resolve(self, name: str, version: int | str | None, available: list[int]) -> int:
        if version in (None, "latest"):
            return available[-1]
        if isinstance(version, int) or (isinstance(version, str) and version.isdigit()):
            number = int(version)
            if number not in available:
                raise RegistryError(f"model '{name}' has no version {number} (versions: {available})")
            return number
        for number in reversed(available):
            if version in self._read_metadata(name, number).get("labels", []):
                return number
        raise RegistryError(f"model '{name}' has no version labelled '{version}'")

    def metadata(self, name: str, version: int) -> dict[str, Any]:
        """One version's metadata.json, read without listing the model's versions (one read on an
        object store, where ``get`` costs a listing too)."""
        try:
            return self._read_metadata(name, version)
        except FileNotFoundError:
            raise RegistryError(f"model '{name}' has no version {version} in the registry at "
                                f"{self.root_uri}") from None

    def _read_metadata(self, name: str, version: int) -> dict[str, Any]:
        with self.fs.open_input_stream(self._path(name, str(version), METADATA_FILE)) as stream:
            return json.loads(stream.read())

    def read_verified(self, model: ModelVersion, verifier: Any = None) -> dict[str, bytes]:
        """The version's files, in memory, after the checks that must come before anything in them
        is deserialised: ``verifier`` (``maas.artifacts.signing.Verifier``, optional) checks the
        signature over the metadata, then the files must hash to the signed content hash."""
        if verifier is not None:
            verifier.verify(model.metadata)
        files = {rel: self._read_file(f"{model.uri}/{rel}") for rel in model.metadata.get("files", {})}
        if not files:  # versions published before file lists were recorded
            files = self._read_remote_tree(model.uri)
        actual = hash_files(files)
        if actual != model.content_hash:
            raise IntegrityError(
                f"model '{model.name}' version {model.version} at {model.uri} fails its integrity "
                f"check: files hash to {actual}, metadata records {model.content_hash}"
            )
        return files

    def _read_file(self, path: str) -> bytes:
        try:
            with self.fs.open_input_stream(path) as stream:
                return stream.read()
        except FileNotFoundError:
            raise IntegrityError(f"file '{path}' listed in the version's metadata is missing") from None

    def _read_remote_tree(self, uri: str) -> dict[str, bytes]:
        infos = list_entries(self.fs, uri, recursive=True)
        return {i.path[len(uri) + 1:]: self._read_file(i.path) for i in infos
                if i.type == FileType.File and i.base_name != METADATA_FILE}

    def fetch(self, model: ModelVersion, destination: str | Path | None = None) -> Path:
        """A local directory holding the version's files, checked against its content hash."""
        if self.local and destination is None:
            local = Path(model.uri)
        else:
            local = Path(destination or tempfile.mkdtemp(prefix=f"maas-{model.name}-{model.version}-"))
            local.mkdir(parents=True, exist_ok=True)
            self._download(model.uri, local)
        actual = hash_directory(local)
        if actual != model.content_hash:
            raise IntegrityError(
                f"model '{model.name}' version {model.version} at {model.uri} fails its integrity "
                f"check: files hash to {actual}, metadata records {model.content_hash}"
            )
        return local

    def _download(self, uri: str, local: Path) -> None:
        if self.local:
            self.fs.copy_tree(uri, str(local))
            return
        import pyarrow.fs as pafs

        pafs.copy_files(uri, str(local), source_filesystem=self.fs,
                        destination_filesystem=pafs.LocalFileSystem())

    # --- writing --------------------------------------------------------------------------

    def publish(self, name: str, source_dir: str | Path, metadata: dict[str, Any]) -> ModelVersion:
        """Copy ``source_dir``'s files in as the next version of ``name``; return it."""
        validate_name(name)
        source = Path(source_dir)
        files = _read_tree(source)
        if not files:
            raise RegistryError(f"nothing to publish: '{source}' holds no files")
        files, encryption = self._encrypted(files)
        full_metadata = {
            # a signature is the publisher's to make, over the final metadata: never a caller's copy
            **{key: value for key, value in metadata.items() if key != "signature"},
            "name": name,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "content_hash": hash_files(files),
            "files": {path: len(content) for path, content in files.items()},
            "labels": list(metadata.get("labels", [])),
        }
        full_metadata.pop("encryption", None)  # a caller's copy of another version's envelope
        if encryption is not None:
            full_metadata["encryption"] = encryption
        try:
            published = (self._publish_local(name, files, full_metadata) if self.local
                         else self._publish_remote(name, files, full_metadata))
        except OSError as exc:
            raise self._storage_error(f"publish a new version of '{name}'", exc) from exc
        self._audit("model.published", model=name, version=published.version,
                    content_hash=published.content_hash, encrypted="encryption" in published.metadata,
                    signed_by=(published.metadata.get("signature") or {}).get("key_id"))
        return published

    def _audit(self, action: str, **fields: Any) -> None:
        from maas.audit import audit_root, record

        record(audit_root(self.root_uri if is_uri(self.root_uri) else self.root), action, **fields)

    def _encrypted(self, files: dict[str, bytes]) -> tuple[dict[str, bytes], dict[str, Any] | None]:
        from maas.artifacts.encryption import MasterKey, encrypt_files

        key = self._encryption_key or MasterKey.from_env()
        return encrypt_files(files, key) if key is not None else (files, None)

    def _storage_error(self, what: str, exc: OSError) -> StorageError:
        """What a user can do about a write the storage refused (the OSError stays chained)."""
        where = exc.filename or self.root_uri
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            advice = "the storage is full (or over its quota): free space, or publish to another " \
                     "registry (--registry / $MAAS_REGISTRY)"
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            advice = "this process may not write there (permissions or a read-only mount): run as " \
                     "a user who may, or publish to another registry (--registry / $MAAS_REGISTRY)"
        else:
            advice = "the storage failed"
        return StorageError(f"could not {what} in the registry at {self.root_uri}: {advice} "
                            f"({exc.strerror or exc} at {where}); nothing was published")

    def _publish_local(self, name: str, files: dict[str, bytes], metadata: dict[str, Any]) -> ModelVersion:
        """Stage every file (synced to disk), then claim the next number (``.claims/<n>``) and rename
        the staged directory to ``<n>``. A publisher killed at any step leaves nothing a reader
        sees: a staging directory (removed by a later publish once it is a day old) or a claim
        (an empty directory under ``.claims/``: the number is skipped, never reused)."""
        base = Path(self._path(name))
        self._remove_stale_staging(base / STAGING_DIR)
        staging = base / STAGING_DIR / uuid.uuid4().hex
        staging.mkdir(parents=True)
        (base / CLAIMS_DIR).mkdir(exist_ok=True)
        try:
            for rel_path, content in files.items():
                _write_synced(staging / rel_path, content)
            while True:  # another publisher may take a number first: retry with the next one
                version = self._next_number(name)
                signed = self._signed({**metadata, "version": version})
                _write_synced(staging / METADATA_FILE, json.dumps(signed, indent=2).encode())
                if self._claim(base / CLAIMS_DIR / str(version)):
                    break
            self._commit(staging, base / str(version))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.get(name, version)

    @staticmethod
    def _claim(target: Path) -> bool:
        """Take a version number: mkdir is atomic, so two publishers never get the same one. The
        claim lives outside the numbered directories, so none of them is ever empty."""
        try:
            target.mkdir()
        except FileExistsError:
            return False
        return True

    @staticmethod
    def _commit(staging: Path, target: Path) -> None:
        os.replace(staging, target)  # atomic: the numbered directory appears with every file in it
        _sync_directory(target.parent)

    @staticmethod
    def _remove_stale_staging(staging_root: Path) -> None:
        if not staging_root.is_dir():
            return
        cutoff = time.time() - STALE_STAGING_S
        for leftover in staging_root.iterdir():
            try:
                if leftover.stat().st_mtime < cutoff:
                    shutil.rmtree(leftover, ignore_errors=True)
            except FileNotFoundError:
                pass  # another publisher removed it first

    def _publish_remote(self, name: str, files: dict[str, bytes], metadata: dict[str, Any]) -> ModelVersion:
        version = self._next_number(name)
        target = self._path(name, str(version))
        if self._exists(target):
            raise RegistryError(f"version {version} of '{name}' is being written by another publisher")
        self.fs.create_dir(target)
        for rel_path, content in files.items():
            with self.fs.open_output_stream(f"{target}/{rel_path}") as out:
                out.write(content)
        with self.fs.open_output_stream(f"{target}/{METADATA_FILE}") as out:  # commit marker
            out.write(json.dumps(self._signed({**metadata, "version": version}), indent=2).encode())
        return self.get(name, version)

    def _signed(self, metadata: dict[str, Any]) -> dict[str, Any]:
        from maas.artifacts.signing import Signer

        signer = self._signer or Signer.from_env()
        return signer.sign(metadata) if signer is not None else metadata

    def served_history(self, name: str) -> list[int]:
        """Versions that a serving replica loaded, most recent first (``record_served``)."""
        try:
            with self.fs.open_input_stream(self._path(validate_name(name), SERVED_FILE)) as stream:
                return [int(v) for v in json.loads(stream.read()).get("versions", [])]
        except (FileNotFoundError, ValueError, TypeError):
            return []

    def record_served(self, name: str, version: int, keep: int = 5) -> None:
        """Put ``version`` first in the model's served history, where every replica can read it:
        a replica that starts while the newest version no longer loads falls back to it. The
        file is a pointer, not a trust anchor: what it names is verified like any version."""
        history = self.served_history(name)
        if history[:1] == [version]:
            return
        history = [version, *[v for v in history if v != version]][:keep]
        self._write_json(self._path(name, SERVED_FILE), {"versions": history})

    def rollout_decisions(self, name: str, rollout_id: str) -> list[dict[str, Any]]:
        """The decisions serving replicas shared about one canary rollout
        (``record_rollout_decision``), in no order; ``maas.serving.canary.furthest`` picks the
        one that holds. Unreadable files (half-written on an object store) are skipped."""
        base = self._path(validate_name(name), ROLLOUT_DIR, _plain(rollout_id))
        try:
            infos = list_entries(self.fs, base, allow_not_found=True)
        except FileNotFoundError:
            return []
        found = []
        for info in infos:
            if info.type != FileType.File or not info.base_name.endswith(".json"):
                continue
            try:
                with self.fs.open_input_stream(info.path) as stream:
                    found.append(json.loads(stream.read()))
            except (FileNotFoundError, ValueError):
                continue
        return found

    def record_rollout_decision(self, name: str, rollout_id: str, decision: dict[str, Any]) -> None:
        """Share one decision of a canary rollout with every replica: its own file, named by its
        rank (``decision["rank"]``), written whole (write-then-rename locally), so no decision
        overwrites a different one and a reader never meets half a file."""
        base = self._path(validate_name(name), ROLLOUT_DIR, _plain(rollout_id))
        if self.local:
            self.fs.create_dir(base, recursive=True)
        self._write_json(f"{base}/{int(decision['rank']):05d}.json", decision)

    def set_labels(self, name: str, version: int, labels: list[str]) -> ModelVersion:
        """Move each label onto ``version`` (a label names one version at a time)."""
        for number in self.versions(name):
            metadata = self._read_metadata(name, number)
            kept = [label for label in metadata.get("labels", []) if label not in labels]
            if number == version:
                kept = sorted(set(kept) | set(labels))
            if kept != metadata.get("labels", []):
                self._write_metadata(name, number, {**metadata, "labels": kept})
                self._audit("label.moved", model=name, version=number, labels=kept)
        return self.get(name, version)

    def _write_metadata(self, name: str, version: int, metadata: dict[str, Any]) -> None:
        try:
            self._write_json(self._path(name, str(version), METADATA_FILE), metadata)
        except OSError as exc:
            raise self._storage_error(f"update version {version} of '{name}'", exc) from exc

    def _write_json(self, path: str, body: dict[str, Any]) -> None:
        replace_file(self.fs, path, json.dumps(body, indent=2).encode())  # a reader never sees half


def _plain(identifier: str) -> str:
    """An id used as a directory name: hex or word characters only."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", identifier):
        raise RegistryError(f"invalid rollout id {identifier!r}")
    return identifier
