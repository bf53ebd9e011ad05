"""Typed configuration: schemas, YAML loading and ``--set key=value`` overrides.

Every schema is frozen and forbids unknown keys, so a typo in a YAML file or an override fails on
the driver in milliseconds, not inside a worker after the cluster has scaled up.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, field_validator, model_validator

from maas.errors import ConfigError
from maas.schema import NAME_PATTERN, StrictSchema, validate_config

DEFAULT_REGISTRY_ENV = "MAAS_REGISTRY"
DEFAULT_STORAGE_ENV = "MAAS_STORAGE"


def default_registry_root() -> str:
    """Registry root: ``$MAAS_REGISTRY`` if set, else ``~/.maas/registry``.

    An absolute default matters: a Ray job runs in a temporary copy of the working directory, so a
    relative path would register models somewhere that vanishes with the job.
    """
    return os.environ.get(DEFAULT_REGISTRY_ENV) or str(Path("~/.maas/registry").expanduser())


def default_storage_path() -> str:
    """Where Ray Train keeps runs and checkpoints: ``$MAAS_STORAGE`` or ``~/.maas/runs``."""
    return os.environ.get(DEFAULT_STORAGE_ENV) or str(Path("~/.maas/runs").expanduser())


DatasetName = Literal["digits", "breast_cancer", "reviews", "mnist", "fashion_mnist", "cifar10",
                      "imdb", "csv", "parquet", "npz", "capture"]
# no data.path: shipped with scikit-learn, generated, or Keras' data sets (maas/keras_datasets.py)
BUILTIN_DATASETS = ("digits", "breast_cancer", "reviews", "mnist", "fashion_mnist", "cifar10", "imdb")
MissingPolicy = Literal["refuse", "drop", "impute_mean", "impute_median"]
IMPUTING = ("impute_mean", "impute_median")


class CaptureSource(StrictSchema):
    """``data.source: capture``: the traffic a served model captured (its settings' ``capture``),
    labelled by the feedback clients sent for it (``maas/capture.py``).

    The range is pinned where the config is first read (the driver): relative times become
    absolute, ``until`` defaults to that moment, and ``as_of`` records it; files written after
    ``as_of`` are not read, so every training worker reads the same rows as the driver, and the
    registered version's config says exactly which traffic it learnt from."""

    model: str = Field(pattern=NAME_PATTERN, description="The served model whose capture is read.")
    since: str = Field(description="Start of the range: an ISO time (2026-12-01, "
                                   "2026-12-01T08:00:00Z; UTC unless it says) or a span back from "
                                   "now (30m, 12h, 7d, 2w).")
    until: str | None = Field(None, description="End of the range (exclusive), the same forms; "
                                                "default: when the config is first read.")
    version: int | None = Field(None, ge=1, description="Only rows this version answered; default: "
                                                        "every version (the newest one's schema).")
    require_label: bool = Field(
        True, description="Drop rows without a feedback label (counted in the job log); false: "
                          "such rows are labelled with the class the model answered.")
    registry: str | None = Field(None, description="Registry whose capture is read; default: the "
                                                   "job's registry.root.")
    as_of: str | None = Field(None, description="Set when the config is first read: files written "
                                                "later are not read (leave it unset).")

    @field_validator("registry")
    @classmethod
    def _absolute_registry(cls, root: str | None) -> str | None:
        """A relative local registry that exists is made absolute on the driver, as data.path."""
        if not root or "://" in root:
            return root
        local = Path(root).expanduser()
        return str(local.resolve()) if not local.is_absolute() and local.exists() else str(local)

    @model_validator(mode="before")
    @classmethod
    def _pin_range(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        from datetime import datetime, timezone

        from maas.capture import iso, parse_time

        raw = dict(raw)
        now = datetime.now(timezone.utc)
        if raw.get("as_of") is not None:
            now = parse_time(str(raw["as_of"]), now, "data.capture.as_of")
        raw["as_of"] = iso(now)
        if raw.get("since") is None:
            return raw  # "field required" follows
        since = parse_time(raw["since"], now, "data.capture.since")
        until = now if raw.get("until") is None else parse_time(raw["until"], now, "data.capture.until")
        if since >= until:
            raise ValueError(f"data.capture.since ({iso(since)}) must be before until ({iso(until)})")
        raw["since"], raw["until"] = iso(since), iso(until)
        return raw


class DataConfig(StrictSchema):
    source: DatasetName = "digits"
    path: str | None = Field(
        None, description="File for csv/parquet/npz sources; for npz and parquet also a directory "
                          "(its *.npz / *.parquet files) or a glob (data/part-*.npz) of shard files "
                          "on storage every node sees: worker r of w then reads only files[r::w] "
                          "of the sorted list (docs/data.md). A relative path that exists, or a "
                          "relative glob, is made absolute where the config is first read (the "
                          "driver), so that training workers, whose working directory differs, "
                          "read the same files.")
    label_column: str = "label"
    text_column: str | None = Field(None, description="csv/parquet: one text feature instead of numbers")
    classes: list[int | str] | None = Field(
        None, description="Declared label values; a label outside them is refused.")
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)
    seed: int = 0
    capture: CaptureSource | None = Field(
        None, description="source capture: the served model, time range and labels to read")
    missing: MissingPolicy = Field(
        "refuse",
        description="Empty (NaN) feature values: refuse (stop the job, naming the column), drop "
                    "(the rows holding them, counted in the job log), impute_mean or impute_median "
                    "(numeric columns filled with the training split's mean or median, inside the "
                    "model, so serving fills them the same way; a categorical column's missing value "
                    "is a category of its own). Infinity is always refused.")
    categorical_columns: list[str] = Field(
        default_factory=list,
        description="csv/parquet: feature columns holding categories (strings, or integer codes). "
                    "The model looks them up in a vocabulary taken from the training split; a "
                    "category it never saw falls into one 'unknown' bucket. Not auto-detected: a "
                    "numeric column with one stray word would silently become categorical.")
    categorical_encoding: Literal["one_hot", "embedding"] = Field(
        "one_hot", description="one_hot: one column per category (plus unknown); embedding: the "
                               "category's integer id into a learnt Embedding of "
                               "categorical_embedding_dim values.")
    categorical_embedding_dim: int = Field(8, ge=1, description="Width of each column's Embedding.")
    max_categories: int = Field(
        1000, ge=1, description="Per categorical column: the most frequent categories of the "
                                "training split kept in its vocabulary; rarer ones count as unknown.")

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, path: str | None) -> str | None:
        if not path or "://" in path:
            return path
        local = Path(path).expanduser()
        if not local.is_absolute() and any(c in path for c in "*?["):  # a glob of shard files
            return os.path.abspath(local)
        return str(local.resolve()) if not local.is_absolute() and local.exists() else path

    @model_validator(mode="after")
    def _path_matches_source(self) -> DataConfig:
        if (self.source == "capture") != (self.capture is not None):
            raise ValueError("data.source: capture needs data.capture (model, since: e.g. 7d), and "
                             "data.capture is only for data.source: capture")
        if self.source == "capture":
            given = [name for name, value in (("path", self.path), ("text_column", self.text_column),
                                              ("classes", self.classes)) if value]
            if given:
                raise ValueError(f"data.{given[0]} does not apply to data.source: capture: the input "
                                 f"shape and classes come from the captured model's registered schema")
            return self
        builtin = self.source in BUILTIN_DATASETS
        if builtin and self.path:
            raise ValueError(f"data.path is only for file sources; '{self.source}' is built in")
        if not builtin and not self.path:
            raise ValueError(f"data.source '{self.source}' needs data.path (the file to read)")
        if self.missing != "refuse" and (builtin or self.text_column):
            what = f"'{self.source}' is built in" if builtin else "data.text_column rows are text"
            raise ValueError(f"data.missing={self.missing} is for numeric and categorical feature "
                             f"columns of csv, parquet or npz files; {what}")
        if self.categorical_columns:
            if self.source not in ("csv", "parquet") or self.text_column:
                raise ValueError("data.categorical_columns is for csv and parquet tables of features "
                                 "(not with data.text_column)")
            repeated = sorted({c for c in self.categorical_columns if self.categorical_columns.count(c) > 1})
            if repeated:
                raise ValueError(f"data.categorical_columns names {repeated} more than once")
            if self.label_column in self.categorical_columns:
                raise ValueError(f"data.categorical_columns names the label column '{self.label_column}'")
        return self


Activation = Literal["relu", "gelu", "tanh", "elu", "selu", "swish", "sigmoid"]


class ModelConfig(StrictSchema):
    type: Literal["mlp", "cnn", "text"] = "mlp"
    hidden_units: list[int] = Field(default_factory=lambda: [128, 64])
    dropout: float = Field(0.1, ge=0, lt=1)
    activation: Activation = "relu"
    # cnn (images) and text (1-D conv encoder)
    conv_filters: list[int] = Field(default_factory=lambda: [32, 64])
    kernel_size: int = Field(3, ge=1)
    # text: tokenisation happens inside the model (TextVectorization)
    vocab_size: int = Field(5000, ge=10)
    sequence_length: int = Field(64, ge=2)
    embedding_dim: int = Field(32, ge=1)
    text_encoder: Literal["conv", "lstm"] = "conv"
    lstm_units: list[int] = Field(default_factory=lambda: [32])

    @field_validator("hidden_units", "conv_filters", "lstm_units")
    @classmethod
    def _positive_sizes(cls, sizes: list[int]) -> list[int]:
        if any(size < 1 for size in sizes):
            raise ValueError(f"layer sizes must be positive integers, got {sizes}")
        return sizes


class OptimizerConfig(StrictSchema):
    name: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    learning_rate: float = Field(1e-3, gt=0, le=10)
    # Linear scaling rule (Goyal et al. 2017): lr x num_workers, as the global batch grows with them.
    scale_lr_with_workers: bool = False


class TrainingConfig(StrictSchema):
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(32, ge=1, description="Per-worker batch; global = this x workers.")
    seed: int = 0
    # Batches run per tf.function call: fewer Python round trips per step for small models.
    steps_per_execution: int = Field(1, ge=1)
    mixed_precision: bool = Field(False, description="float16 compute on GPUs; ignored on CPU.")


class ScalingSection(StrictSchema):
    num_workers: int = Field(2, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: Literal["auto"] | bool = Field("auto", description="auto: GPUs when the cluster has them")
    resources_per_worker: dict[str, float] | None = Field(
        None, description="Overrides cpus_per_worker, e.g. {CPU: 4, GPU: 1}")
    # An autoscaling cluster grows to fit the job; a fixed one must already have room for it.
    autoscaling: bool = False

    def worker_resources(self, use_gpu: bool) -> dict[str, float]:
        resources = dict(self.resources_per_worker or {"CPU": self.cpus_per_worker})
        if use_gpu:
            resources.setdefault("GPU", 1.0)
        return resources


class RunSection(StrictSchema):
    name: str | None = Field(None, description="Ray Train run name; default <model>-<timestamp>.")
    storage_path: str = Field(default_factory=default_storage_path)
    max_failures: int = Field(2, ge=-1, description="Worker-group restarts from the last checkpoint")
    resume: bool = Field(False, description="Continue the run named run.name from its last checkpoint")
    checkpoints_to_keep: int = Field(2, ge=1)
    checkpoint_every_epochs: int = Field(
        1, ge=1,
        description="Write a checkpoint every N epochs (the last epoch always gets one, so the "
                    "finished run has its model). A worker failure then redoes up to N-1 epochs "
                    "from the last checkpoint; history stays gap-free. Each checkpoint costs a "
                    "model save on every worker (about 0.13 s for the digits MLP on 2 cores).")


class RegistrySection(StrictSchema):
    root: str = Field(default_factory=default_registry_root)
    model_name: str = Field("digits_mlp", pattern=NAME_PATTERN)


class TrainJobConfig(StrictSchema):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    scaling: ScalingSection = Field(default_factory=ScalingSection)
    run: RunSection = Field(default_factory=RunSection)
    registry: RegistrySection = Field(default_factory=RegistrySection)

    @model_validator(mode="before")
    @classmethod
    def _capture_registry(cls, raw: Any) -> Any:
        """Captured traffic is read from the job's own registry unless data.capture says otherwise
        (filled in here, so it travels to the workers as it was resolved on the driver)."""
        if not isinstance(raw, dict):
            return raw
        data = raw.get("data")
        capture = data.get("capture") if isinstance(data, dict) else None
        if isinstance(capture, dict) and capture.get("registry") is None:
            registry = raw.get("registry")
            root = registry.get("root") if isinstance(registry, dict) else None
            raw = {**raw, "data": {**data, "capture": {**capture,
                                                       "registry": root or default_registry_root()}}}
        return raw


# ---------------------------------------------------------------------------------------------
# Loading


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated by ``overlay``; nested dicts merge, everything else replaces."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(override: str) -> tuple[list[str], Any]:
    """``"model.hidden_units=[64, 32]"`` -> (["model", "hidden_units"], [64, 32]).

    The value is parsed as YAML so numbers, lists and booleans keep their types.
    """
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{override}' is not of the form key=value (e.g. training.epochs=5)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{override}': value is not valid YAML ({exc})") from None
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    result = dict(raw)
    for override in overrides:
        path, value = parse_override(override)
        result = deep_merge(result, nested(path, value))
    return result


def nested(path: Sequence[str], value: Any) -> dict[str, Any]:
    nested: Any = value
    for part in reversed(path):
        nested = {part: nested}
    return nested


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{path}' is not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping at the top, got {type(loaded).__name__}")
    return loaded


def load_config(
    paths: str | Path | Sequence[str | Path],
    overrides: Iterable[str] = (),
    schema: type[StrictSchema] = TrainJobConfig,
) -> Any:
    """Read one or more YAML files (later ones overlay earlier ones), apply overrides, validate."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    raw: dict[str, Any] = {}
    for path in paths:
        raw = deep_merge(raw, read_yaml(path))
    overrides = list(overrides)
    raw = apply_overrides(raw, overrides)
    source = " + ".join(str(p) for p in paths) + (" with --set " + " ".join(overrides) if overrides else "")
    return validate_config(schema, raw, source)


def config_to_dict(config: BaseModel) -> dict[str, Any]:
    """Plain JSON-able dict: what crosses the Ray boundary and lands in registry metadata."""
    return config.model_dump(mode="json")
