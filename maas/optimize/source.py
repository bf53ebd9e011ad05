"""The version being optimised: its Keras model, loaded from verified bytes, and its data splits
re-created exactly as training made them (same data config, same seed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from maas.data import DataSchema, Splits
from maas.errors import ConfigError, DataError, ModelError
from maas.registry import ModelVersion, Registry

KERAS_FILE = "model.keras"


@dataclass
class Parent:
    version: ModelVersion
    model: Any  # tf_keras.Model
    schema: DataSchema
    keras_bytes: bytes
    # its SavedModel files (relative path -> verified, decrypted bytes) when it carries one: every
    # version published since SavedModels are written at publish does (metadata["saved_model"])
    saved_model: dict[str, bytes] = field(default_factory=dict)
    saved_model_block: dict[str, Any] | None = None  # its metadata["saved_model"]

    @property
    def what(self) -> str:
        return f"model '{self.version.name}' version {self.version.version}"


def parse_model_ref(ref: str) -> tuple[str, str | None]:
    """``NAME[:VERSION]`` (a number, ``latest`` or a label) -> (name, version or None)."""
    name, _, version = ref.partition(":")
    if not name:
        raise ConfigError(f"--model '{ref}' is not NAME or NAME:VERSION (e.g. digits_mlp:3)")
    return name, version or None


def load_parent(registry: Registry, name: str, version: str | None) -> Parent:
    """Resolve, verify (signature with ``$MAAS_VERIFY_KEY`` if set, content hash), decrypt in
    memory, check the Keras archive against the allow-list and load it."""
    from maas.artifacts.keras_loader import load_keras_bytes
    from maas.artifacts.savedmodel import METADATA_KEY, files_of
    from maas.artifacts.signing import Verifier

    entry = registry.get(name, version)
    what = f"model '{name}' version {entry.version}"
    kind = (entry.metadata.get("artifact") or {}).get("format", "keras")
    filename = entry.metadata.get("format", KERAS_FILE)
    if kind not in ("keras", "savedmodel") or not filename.endswith(".keras"):
        raise ModelError(f"{what} is a '{kind}' variant ({filename}); optimise the Keras version it "
                         f"came from (parent_version {entry.metadata.get('parent_version')}) instead")
    files = registry.read_verified(entry, Verifier.from_setting(None))
    if "encryption" in entry.metadata:
        from maas.artifacts.encryption import MasterKey, decrypt_files

        files = decrypt_files(files, entry.metadata["encryption"], MasterKey.from_env(), what)
    model = load_keras_bytes(files[filename], filename, what)
    return Parent(entry, model, DataSchema.from_dict(entry.metadata["schema"]), files[filename],
                  files_of(entry.metadata, files), entry.metadata.get(METADATA_KEY))


def recreate_splits(parent: Parent) -> Splits:
    """The parent's train/validation/test splits: its recorded data config re-read and split with
    the same fractions and seed; the data fingerprint must match the one recorded at training."""
    from maas.config import DataConfig
    from maas.data import load_dataset
    from maas.schema import validate_config

    config = parent.version.metadata.get("config") or {}
    if "data" not in config:
        raise DataError(f"{parent.what} records no data config, so its test split cannot be re-created")
    splits = load_dataset(validate_config(DataConfig, config["data"], f"{parent.what} data config"))
    recorded = (parent.version.metadata.get("lineage") or {}).get("data_fingerprint")
    if recorded and recorded != splits.fingerprint:
        raise DataError(f"{parent.what} was trained on data with fingerprint {recorded}; "
                        f"{splits.schema.source} now gives {splits.fingerprint}: the data changed, so "
                        "its test split cannot be re-created to compare variants against it")
    return splits
