"""Encryption at rest: files in the registry are ciphertext; serving decrypts in memory only and
writes nothing of the model to disk; a missing or wrong key, or a tampered envelope, is a clear
error naming the model and version."""

import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from maas.artifacts.encryption import MasterKey, generate_master_key
from maas.cli import main as maas_main
from maas.errors import ConfigError, IntegrityError
from maas.registry import METADATA_FILE, Registry, hash_directory
from tests.unit.test_model_safety import _good_archive

SCHEMA = {"input_shape": [4], "classes": [0, 1], "dtype": "float32"}


@pytest.fixture
def archive(tmp_path: Path) -> bytes:
    _good_archive(tmp_path / "good.keras")
    return (tmp_path / "good.keras").read_bytes()


@pytest.fixture
def master(tmp_path: Path, monkeypatch) -> Path:
    path = generate_master_key(tmp_path / "keys" / "master.key")
    monkeypatch.setenv("MAAS_MASTER_KEY_FILE", str(path))
    return path


def _publish(registry: Registry, tmp_path: Path, content: bytes, schema=SCHEMA) -> int:
    source = tmp_path / f"src{len(list(tmp_path.glob('src*')))}"
    source.mkdir()
    (source / "model.keras").write_bytes(content)
    return registry.publish("m", source, {"schema": schema, "format": "model.keras"}).version


def test_files_at_rest_are_ciphertext_and_the_hash_still_checks_without_the_key(
        tmp_path: Path, registry_root: str, archive: bytes, master: Path, monkeypatch) -> None:
    registry = Registry(registry_root)
    _publish(registry, tmp_path, archive)
    stored = (Path(registry.root) / "m" / "1" / "model.keras").read_bytes()
    assert stored != archive and b"config.json" not in stored and b"model.weights.h5" not in stored
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(stored))
    entry = registry.get("m")
    assert entry.metadata["encryption"]["key_id"] == MasterKey.load(str(master)).key_id
    monkeypatch.delenv("MAAS_MASTER_KEY_FILE")
    registry.read_verified(entry)  # integrity is checked on the ciphertext, no key needed


class WriteRecorder:
    """Every file a Python call opens for writing while active (open() and os.open())."""

    def __init__(self, monkeypatch) -> None:
        import builtins

        self.paths: list[str] = []
        real_open, real_os_open = builtins.open, os.open

        def recording_open(file, mode="r", *args, **kwargs):
            if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
                self.paths.append(os.fsdecode(file))
            return real_open(file, mode, *args, **kwargs)

        def recording_os_open(path, flags, *args, **kwargs):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                self.paths.append(os.fsdecode(path))
            return real_os_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", recording_open)
        monkeypatch.setattr(os, "open", recording_os_open)

    def on_disk(self) -> list[str]:
        return [p for p in self.paths if not os.path.abspath(p).startswith("/dev/shm/")]


def test_serving_decrypts_in_memory_and_writes_nothing_to_disk(
        tmp_path: Path, registry_root: str, archive: bytes, master: Path, monkeypatch) -> None:
    """The replica's temp and working directories are scanned after the load."""
    from maas.serving.model import LoadedModel

    registry = Registry(registry_root)
    _publish(registry, tmp_path, archive)
    scratch, work = tmp_path / "replica-tmp", tmp_path / "replica-cwd"
    scratch.mkdir()
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.chdir(work)
    shm_before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    writes = WriteRecorder(monkeypatch)
    loaded = LoadedModel.from_registry(registry_root, "m", 1)
    assert writes.on_disk() == [], writes.paths
    predictions = loaded.predict(np.ones((3, 4), dtype=np.float32))
    assert predictions.shape == (3, 2) and np.allclose(predictions.sum(axis=1), 1, atol=1e-5)
    leftovers = [p for d in (scratch, work) for p in d.rglob("*")]
    assert leftovers == [], leftovers
    if shm_before or os.path.isdir("/dev/shm"):
        assert not [n for n in set(os.listdir("/dev/shm")) - shm_before if n.startswith("maas-load-")]


def test_a_missing_or_wrong_key_is_a_clear_error_naming_the_version(
        tmp_path: Path, registry_root: str, archive: bytes, master: Path, monkeypatch) -> None:
    from maas.serving.model import LoadedModel

    registry = Registry(registry_root)
    _publish(registry, tmp_path, archive)
    monkeypatch.delenv("MAAS_MASTER_KEY_FILE")
    with pytest.raises(IntegrityError, match=r"model 'm' version 1 is encrypted .* no master key"):
        LoadedModel.from_registry(registry_root, "m", 1)
    other = generate_master_key(tmp_path / "other.key")
    monkeypatch.setenv("MAAS_MASTER_KEY_FILE", str(other))
    with pytest.raises(IntegrityError, match=r"model 'm' version 1 cannot be decrypted with master key"):
        LoadedModel.from_registry(registry_root, "m", 1)


def test_files_swapped_between_names_do_not_decrypt(tmp_path: Path, registry_root: str,
                                                    master: Path) -> None:
    """Each file's name is bound to its ciphertext (associated data): an attacker who swaps two
    files and recomputes the unsigned content hash still gets a refusal."""
    from maas.artifacts.encryption import decrypt_files

    registry = Registry(registry_root)
    source = tmp_path / "two"
    source.mkdir()
    (source / "model.keras").write_bytes(b"a" * 10)
    (source / "extra.bin").write_bytes(b"b" * 10)
    registry.publish("m", source, {"format": "model.keras"})
    version_dir = Path(registry.root) / "m" / "1"
    a, b = (version_dir / "model.keras").read_bytes(), (version_dir / "extra.bin").read_bytes()
    (version_dir / "model.keras").write_bytes(b)
    (version_dir / "extra.bin").write_bytes(a)
    path = version_dir / METADATA_FILE
    metadata = json.loads(path.read_text())
    metadata["content_hash"] = hash_directory(version_dir)
    path.write_text(json.dumps(metadata))
    entry = registry.get("m")
    files = registry.read_verified(entry)
    with pytest.raises(IntegrityError, match="cannot be decrypted"):
        decrypt_files(files, entry.metadata["encryption"], MasterKey.load(str(master)), "model 'm' version 1")


def test_an_encrypted_text_model_with_assets_loads(tmp_path: Path, registry_root: str, master: Path,
                                                   monkeypatch) -> None:
    from maas.config import ModelConfig
    from maas.data import DataSchema
    from maas.models import build_model
    from maas.serving.model import LoadedModel
    from maas.tfkeras import save_model

    schema = DataSchema((), ["neg", "pos"], dtype="string")
    model = build_model(ModelConfig(type="text"), schema, None, None, np.array(["a good film", "bad"]))
    save_model(model, str(tmp_path / "text.keras"))
    registry = Registry(registry_root)
    _publish(registry, tmp_path, (tmp_path / "text.keras").read_bytes(), schema.to_dict())
    scratch = tmp_path / "replica-tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    writes = WriteRecorder(monkeypatch)
    loaded = LoadedModel.from_registry(registry_root, "m", 1)
    assert writes.on_disk() == [], writes.paths
    assert loaded.predict(np.array(["a good film"])).shape == (1, 2)
    assert list(scratch.rglob("*")) == []


def test_master_keys_are_32_private_bytes_and_never_overwritten(tmp_path: Path, capsys) -> None:
    assert maas_main(["models", "keygen", str(tmp_path / "k"), "--master"]) == 0
    path = tmp_path / "k" / "master.key"
    assert path.stat().st_size == 32 and path.stat().st_mode & 0o777 == 0o600
    assert maas_main(["models", "keygen", str(tmp_path / "k"), "--master"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    (tmp_path / "short.key").write_bytes(b"x" * 16)
    with pytest.raises(ConfigError, match="must hold 32 bytes"):
        MasterKey.load(str(tmp_path / "short.key"))
