"""Signed versions: each attack an attacker with write access to the registry could try is
refused when serving has the publisher's public key; labels still move freely."""

import json
from pathlib import Path

import pytest

from maas.artifacts.signing import Signer, Verifier, generate_keys
from maas.cli import main as maas_main
from maas.errors import ConfigError, IntegrityError
from maas.registry import METADATA_FILE, Registry, hash_directory


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    ours = generate_keys(tmp_path / "ours")
    stranger = generate_keys(tmp_path / "stranger")
    return {"private": ours[0], "public": ours[1], "stranger": stranger[0],
            "stranger_public": stranger[1]}


def _source(tmp_path: Path, content: bytes = b"weights") -> Path:
    source = tmp_path / f"src-{len(list(tmp_path.iterdir()))}"
    source.mkdir()
    (source / "model.keras").write_bytes(content)
    return source


def _publish(root: str, tmp_path: Path, key: Path | None) -> Registry:
    signer = Signer.load(str(key)) if key else None
    registry = Registry(root, signer=signer)
    registry.publish("m", _source(tmp_path), {"schema": {"input_shape": [4]}, "format": "model.keras",
                                               "metrics": {"test_accuracy": 0.9}})
    return registry


def _metadata_path(registry: Registry, version: int = 1) -> Path:
    return Path(registry.root) / "m" / str(version) / METADATA_FILE


def test_a_signed_version_verifies_and_names_its_key(tmp_path: Path, registry_root: str, keys) -> None:
    registry = _publish(registry_root, tmp_path, keys["private"])
    verifier = Verifier.load(str(keys["public"]))
    entry = registry.get("m")
    assert entry.metadata["signature"]["key_id"] == verifier.key_id
    assert registry.read_verified(entry, verifier) == {"model.keras": b"weights"}


def test_publishers_sign_with_the_key_named_in_the_environment(tmp_path: Path, registry_root: str,
                                                               keys, monkeypatch) -> None:
    monkeypatch.setenv("MAAS_SIGNING_KEY", str(keys["private"]))
    registry = _publish(registry_root, tmp_path, None)
    registry.read_verified(registry.get("m"), Verifier.load(str(keys["public"])))


def test_an_unsigned_version_is_refused(tmp_path: Path, registry_root: str, keys) -> None:
    registry = _publish(registry_root, tmp_path, None)
    with pytest.raises(IntegrityError, match="is not signed"):
        registry.read_verified(registry.get("m"), Verifier.load(str(keys["public"])))


def test_a_version_signed_by_a_stranger_is_refused(tmp_path: Path, registry_root: str, keys) -> None:
    registry = _publish(registry_root, tmp_path, keys["stranger"])
    with pytest.raises(IntegrityError, match="not by the trusted key"):
        registry.read_verified(registry.get("m"), Verifier.load(str(keys["public"])))


def test_metadata_changed_after_signing_is_refused(tmp_path: Path, registry_root: str, keys) -> None:
    registry = _publish(registry_root, tmp_path, keys["private"])
    path = _metadata_path(registry)
    metadata = json.loads(path.read_text())
    metadata["schema"]["input_shape"] = [5]  # what serving validates requests against
    path.write_text(json.dumps(metadata))
    with pytest.raises(IntegrityError, match="changed after signing"):
        registry.read_verified(registry.get("m"), Verifier.load(str(keys["public"])))


def test_files_swapped_with_a_recomputed_hash_are_refused(tmp_path: Path, registry_root: str,
                                                          keys) -> None:
    """The attack a content hash alone cannot stop: new files and their new hash."""
    registry = _publish(registry_root, tmp_path, keys["private"])
    version_dir = Path(registry.root) / "m" / "1"
    (version_dir / "model.keras").write_bytes(b"attacker's weights")
    path = _metadata_path(registry)
    metadata = json.loads(path.read_text())
    metadata["content_hash"] = hash_directory(version_dir)
    path.write_text(json.dumps(metadata))
    verifier = Verifier.load(str(keys["public"]))
    with pytest.raises(IntegrityError, match="changed after signing"):
        registry.read_verified(registry.get("m"), verifier)
    # and a file changed without touching the metadata fails the signed content hash
    registry2 = _publish(str(tmp_path / "r2"), tmp_path, keys["private"])
    (Path(registry2.root) / "m" / "1" / "model.keras").write_bytes(b"tampered")
    with pytest.raises(IntegrityError, match="fails its integrity check"):
        registry2.read_verified(registry2.get("m"), verifier)


def test_resigning_with_a_strangers_key_is_refused(tmp_path: Path, registry_root: str, keys) -> None:
    registry = _publish(registry_root, tmp_path, keys["private"])
    path = _metadata_path(registry)
    metadata = json.loads(path.read_text())
    metadata["metrics"]["test_accuracy"] = 0.99
    path.write_text(json.dumps(Signer.load(str(keys["stranger"])).sign(metadata)))
    with pytest.raises(IntegrityError, match="not by the trusted key"):
        registry.read_verified(registry.get("m"), Verifier.load(str(keys["public"])))


def test_moving_labels_keeps_the_signature_valid(tmp_path: Path, registry_root: str, keys) -> None:
    registry = _publish(registry_root, tmp_path, keys["private"])
    registry.set_labels("m", 1, ["stable"])
    registry.read_verified(registry.get("m", "stable"), Verifier.load(str(keys["public"])))


def test_models_verify_by_hand(tmp_path: Path, registry_root: str, keys, capsys) -> None:
    registry = _publish(registry_root, tmp_path, keys["private"])
    base = ["--registry", registry_root, "models", "verify", "m"]
    assert maas_main([*base, "--key", str(keys["public"])]) == 0
    assert "signed by key" in capsys.readouterr().out
    assert maas_main([*base, "--key", str(keys["stranger_public"])]) == 1
    assert "not by the trusted key" in capsys.readouterr().err
    assert maas_main(base) == 2  # no key given: says what to pass
    assert "pass --key" in capsys.readouterr().err
    (Path(registry.root) / "m" / "1" / "model.keras").write_bytes(b"tampered")
    assert maas_main([*base, "--key", str(keys["public"])]) == 1
    assert "fails its integrity check" in capsys.readouterr().err


def test_keys_are_created_private_and_never_overwritten(tmp_path: Path, keys) -> None:
    assert keys["private"].stat().st_mode & 0o777 == 0o600
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        generate_keys(keys["private"].parent)
    with pytest.raises(ConfigError, match="does not exist"):
        Verifier.load(str(tmp_path / "missing.pub"))
    with pytest.raises(ConfigError, match="not a PEM public key"):
        Verifier.load(str(keys["private"]))


def test_serving_refuses_a_tampered_signed_version_and_keeps_the_old_one(
        tmp_path: Path, registry_root: str, keys) -> None:
    import asyncio

    from maas.serving.host import ModelHost
    from tests.unit.test_model_safety import _good_archive
    from tests.unit.test_serve_hosting import direct_batcher

    archive = _good_archive(tmp_path / "good.keras")
    signer = Signer.load(str(keys["private"]))
    registry = Registry(registry_root, signer=signer)
    for number in (1, 2):
        source = tmp_path / f"v{number}"
        source.mkdir()
        (source / "model.keras").write_bytes(_rezip(archive))
        registry.publish("m", source, {"schema": {"input_shape": [4], "classes": [0, 1],
                                                  "dtype": "float32"}, "format": "model.keras"})
    path = _metadata_path(registry, 2)
    metadata = json.loads(path.read_text())
    metadata["schema"]["classes"] = ["x", "y"]
    path.write_text(json.dumps(metadata))
    host = ModelHost("m", registry_root, 16, batcher=direct_batcher,
                     verifier=Verifier.load(str(keys["public"])))

    async def scenario() -> dict:
        await host.configure({"versions": {"specific": [1]}})
        await host.configure({"versions": {"latest": 1}})  # swap to the tampered 2: refused
        return await host.status()

    status = asyncio.run(scenario())
    assert status["served_versions"] == [1] and "changed after signing" in status["load_error"]


def _rezip(files: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def test_the_verify_key_reaches_every_model_deployment_and_the_ingress(tmp_path: Path, keys) -> None:
    """build_app hands the app's verify_key to each model's own deployment (models in the ingress
    get it from the app's config there); a key that cannot be read fails the deploy at once."""
    from serve.app import build_app

    app = build_app({"registry_root": str(tmp_path), "verify_key": str(keys["public"]),
                     "models": [{"name": "own"}, {"name": "hosted", "hosting": "ingress"}]})
    handles, config = app._bound_deployment.init_args
    assert handles["own"]._bound_deployment.init_args[-1] == str(keys["public"])
    assert config["verify_key"] == str(keys["public"]) and "hosted" not in handles
    with pytest.raises(ConfigError, match="does not exist"):
        build_app({"registry_root": str(tmp_path), "verify_key": str(tmp_path / "missing.pub"),
                   "models": [{"name": "own"}]})
