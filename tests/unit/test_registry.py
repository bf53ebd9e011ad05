import json
import threading
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from maas.errors import StorageError
from maas.registry import IntegrityError, Registry, RegistryError, hash_directory


def _model_dir(tmp_path: Path, content: bytes = b"weights") -> Path:
    source = tmp_path / f"src-{hash(content)}"
    source.mkdir()
    (source / "model.keras").write_bytes(content)
    return source


def test_versions_are_numbered_and_carry_metadata(tmp_path: Path, registry_root: str) -> None:
    registry = Registry(registry_root)
    first = registry.publish("m", _model_dir(tmp_path, b"1"), {"metrics": {"test_accuracy": 0.9}})
    second = registry.publish("m", _model_dir(tmp_path, b"2"), {"metrics": {}})
    assert (first.version, second.version) == (1, 2)
    assert registry.versions("m") == [1, 2]
    assert registry.get("m").version == 2
    assert Path(registry_root, "m", "1", "model.keras").read_bytes() == b"1"
    meta = registry.get("m", 1).metadata
    assert meta["metrics"]["test_accuracy"] == 0.9
    assert meta["content_hash"].startswith("sha256:") and meta["created_at"]
    assert meta["files"] == {"model.keras": 1}


def test_missing_model_and_version_errors_list_what_exists(tmp_path: Path, registry_root: str) -> None:
    registry = Registry(registry_root)
    registry.publish("m", _model_dir(tmp_path), {})
    with pytest.raises(RegistryError, match=r"'other' is not in the registry .*models: m"):
        registry.get("other")
    with pytest.raises(RegistryError, match=r"no version 5 \(versions: \[1\]\)"):
        registry.get("m", 5)
    assert registry.metadata("m", 1) == registry.get("m", 1).metadata
    with pytest.raises(RegistryError, match="model 'm' has no version 5 in the registry at"):
        registry.metadata("m", 5)


@pytest.mark.parametrize("name", ["../etc", "a/b", "", ".hidden", "x" * 65])
def test_unsafe_names_are_refused(registry_root: str, name: str) -> None:
    with pytest.raises(RegistryError, match="invalid model name"):
        Registry(registry_root).get(name)


def test_tampered_files_fail_the_integrity_check(tmp_path: Path, registry_root: str) -> None:
    registry = Registry(registry_root)
    version = registry.publish("m", _model_dir(tmp_path), {})
    Path(version.uri, "model.keras").write_bytes(b"evil")
    with pytest.raises(IntegrityError, match="fails its integrity check"):
        registry.fetch(registry.get("m"))


def test_fetch_to_a_destination_copies_and_verifies(tmp_path: Path, registry_root: str) -> None:
    registry = Registry(registry_root)
    registry.publish("m", _model_dir(tmp_path), {})
    local = registry.fetch(registry.get("m"), tmp_path / "copy")
    assert (local / "model.keras").read_bytes() == b"weights"


def test_crash_mid_write_leaves_no_visible_version(tmp_path: Path, registry_root: str) -> None:
    """Simulate publishers killed at each stage: staged files, a claimed number, files w/o metadata."""
    registry = Registry(registry_root)
    registry.publish("m", _model_dir(tmp_path), {})
    base = Path(registry_root, "m")
    (base / ".staging" / "dead").mkdir(parents=True)
    (base / ".staging" / "dead" / "model.keras").write_bytes(b"half")
    (base / "2").mkdir()  # number claimed, rename never happened
    (base / "3").mkdir()
    (base / "3" / "model.keras").write_bytes(b"half")  # object store copy without commit marker
    assert registry.versions("m") == [1]
    assert registry.get("m").version == 1
    assert registry.publish("m", _model_dir(tmp_path, b"new"), {}).version == 4


def test_publish_failure_midway_cleans_staging(tmp_path: Path, registry_root: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    registry = Registry(registry_root)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("maas.registry.os.replace", crash)
    with pytest.raises(StorageError, match="disk full.*nothing was published"):
        registry.publish("m", _model_dir(tmp_path), {})
    assert registry.versions("m") == []
    assert list(Path(registry_root, "m", ".staging").iterdir()) == []


def test_a_numbered_directory_is_never_empty_for_tf_serving(tmp_path: Path, registry_root: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorFlow Serving loads every numbered directory it sees (the highest by default): the
    number a publisher claims lives under .claims/, so one killed between claim and rename leaves
    no empty numbered directory behind, and its number is skipped."""
    registry = Registry(registry_root)
    registry.publish("m", _model_dir(tmp_path), {})

    def killed(*args, **kwargs):
        raise OSError("killed between claim and rename")

    monkeypatch.setattr("maas.registry.os.replace", killed)
    with pytest.raises(StorageError):
        registry.publish("m", _model_dir(tmp_path, b"lost"), {})
    monkeypatch.undo()
    base = Path(registry_root, "m")
    assert sorted(p.name for p in base.iterdir() if p.name.isdigit()) == ["1"]
    assert (base / ".claims" / "2").is_dir()
    assert registry.publish("m", _model_dir(tmp_path, b"next"), {}).version == 3
    assert all(any(p.iterdir()) for p in base.iterdir() if p.name.isdigit())


def test_concurrent_publishers_get_distinct_versions(tmp_path: Path, registry_root: str) -> None:
    registry = Registry(registry_root)
    sources = [_model_dir(tmp_path, str(i).encode()) for i in range(6)]
    results: list[int] = []
    threads = [threading.Thread(target=lambda s=s: results.append(registry.publish("m", s, {}).version))
               for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [1, 2, 3, 4, 5, 6]
    for version in results:  # each version holds exactly the files its metadata hashes
        registry.fetch(registry.get("m", version))


def test_labels_move_between_versions(tmp_path: Path, registry_root: str) -> None:
    registry = Registry(registry_root)
    registry.publish("m", _model_dir(tmp_path, b"1"), {})
    registry.publish("m", _model_dir(tmp_path, b"2"), {})
    registry.set_labels("m", 1, ["stable"])
    assert registry.get("m", "stable").version == 1
    registry.set_labels("m", 2, ["stable"])
    assert registry.get("m", "stable").version == 2
    assert registry.get("m", 1).metadata["labels"] == []
    with pytest.raises(RegistryError, match="no version labelled 'canary'"):
        registry.get("m", "canary")


def test_object_store_path_writes_metadata_last(tmp_path: Path) -> None:
    """Non-local filesystems publish without rename; metadata.json is the commit marker."""
    memory = pafs._MockFileSystem()
    registry = Registry("bucket/registry", filesystem=memory)
    assert not registry.local
    version = registry.publish("m", _model_dir(tmp_path), {"metrics": {"a": 1}})
    assert version.version == 1
    with memory.open_input_stream("bucket/registry/m/1/metadata.json") as f:
        assert json.loads(f.read())["version"] == 1
    local = registry.fetch(version, tmp_path / "dl")
    assert hash_directory(local) == version.content_hash
    memory.create_dir("bucket/registry/m/2")  # an upload that never committed
    assert registry.versions("m") == [1]
    assert registry.publish("m", _model_dir(tmp_path, b"x"), {}).version == 3


def test_served_history_keeps_the_newest_first_and_survives_a_read_only_start(tmp_path) -> None:
    registry = Registry(str(tmp_path / "r"))
    source = tmp_path / "m"
    source.mkdir()
    (source / "model.keras").write_bytes(b"x")
    registry.publish("m", source, {})
    assert registry.served_history("m") == []
    for version in (1, 2, 1, 3, 4, 5, 6, 7):
        registry.record_served("m", version)
    assert registry.served_history("m") == [7, 6, 5, 4, 3]
    assert registry.versions("m") == [1]  # the history file is not a version
