"""Data sets -> train/validation/test splits + a schema. No model code lives here.

Policy for bad values: rows holding NaN or infinity are refused, not dropped, with the column and
row count named, because silently training on fewer rows hides a broken upstream export.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maas.config import DataConfig
from maas.errors import DataError


@dataclass(frozen=True)
class DataSchema:
    """What a model consumes and produces: travels into the registry and to serving."""

    input_shape: tuple[int, ...]
    classes: list[Any]
    dtype: str = "float32"
    feature_names: list[str] | None = None
    source: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) in (2, 3)

    @property
    def is_text(self) -> bool:
        return self.dtype == "string"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataSchema:
        return cls(**{**data, "input_shape": tuple(data["input_shape"])})


@dataclass
class Splits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    schema: DataSchema
    fingerprint: str = field(default="")

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.x_train), "val": len(self.x_val), "test": len(self.x_test)}


# ---------------------------------------------------------------------------------------------
# Readers: each returns (features float32 [n, ...], raw labels [n], feature names or None)


def _builtin(name: str) -> tuple[np.ndarray, np.ndarray, list[str] | None, tuple[int, ...]]:
    from sklearn import datasets

    if name == "reviews":
        texts, labels = generate_reviews(3000, seed=0)
        return texts, labels, None, ()
    if name == "digits":
        bunch = datasets.load_digits()
        return bunch.images.astype(np.float32), bunch.target, None, (8, 8)
    bunch = datasets.load_breast_cancer()
    names = [str(n) for n in bunch.feature_names]
    return bunch.data.astype(np.float32), bunch.target, names, (len(names),)


_POSITIVE = ["good", "great", "excellent", "wonderful", "delightful", "superb", "enjoyable", "fantastic"]
_NEGATIVE = ["bad", "awful", "terrible", "boring", "dreadful", "poor", "disappointing", "bland"]
_ITEMS = ["movie", "food", "service", "book", "hotel", "phone", "concert", "game", "staff", "room"]
_OPENERS = ["honestly", "i think", "overall", "to be fair", "in short", "well", "frankly", ""]
_INTENSIFIERS = ["very", "really", "quite", "so", "rather", ""]
_FILLER = ["we went there on a monday", "my friend came along", "it was raining", "the price was fair",
           "we stayed two hours", "i had read about it", "the place was busy", "nothing else to add"]


def generate_reviews(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A generated sentiment set (no download): short reviews whose label hinges on an adjective
    and on negation ("not good" is negative), so word order matters to the model."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(count):
        positive = bool(rng.integers(2))
        negated = rng.random() < 0.3
        adjective = rng.choice(_POSITIVE if positive != negated else _NEGATIVE)
        words = [rng.choice(_OPENERS), "the", rng.choice(_ITEMS), "was",
                 "not" if negated else "", rng.choice(_INTENSIFIERS), adjective]
        sentence = " ".join(w for w in words if w)
        if rng.random() < 0.5:
            sentence = f"{rng.choice(_FILLER)} and {sentence}" if rng.random() < 0.5 else \
                f"{sentence} but {rng.choice(_FILLER)}"
        texts.append(sentence)
        noisy = rng.random() < 0.03  # a few mislabelled reviews, as in any real set
        labels.append("positive" if positive != noisy else "negative")
    return np.array(texts, dtype=object), np.array(labels)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"data file '{path}' does not exist")
    if not path.is_file():
        raise DataError(f"data path '{path}' is not a file")
    if path.stat().st_size == 0:
        raise DataError(f"data file '{path}' is empty (0 bytes)")


def _read_table(path: Path, fmt: str):
    import pandas as pd

    try:
        if fmt == "csv":
            return pd.read_csv(path)
        return pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"data file '{path}' is empty (no header, no rows)") from None
    except Exception as exc:  # a parser error: say which file and what the parser saw
        raise DataError(f"data file '{path}' could not be read as {fmt}: {exc}") from None


def _require_column(frame, path: Path, column: str, role: str) -> None:
    if column not in frame.columns:
        columns = ", ".join(map(str, frame.columns[:20]))
        raise DataError(f"data file '{path}' has no {role} column '{column}'; its columns are: {columns}")


def _table_to_text(frame, path: Path, label: str, text: str) -> tuple[np.ndarray, np.ndarray]:
    for column, role in ((label, "label"), (text, "text")):
        _require_column(frame, path, column, role)
    if len(frame) == 0:
        raise DataError(f"data file '{path}' has a header but no rows")
    empty = frame[text].isna() | (frame[text].astype(str).str.strip() == "")
    if empty.any():
        raise DataError(f"data file '{path}': text column '{text}' has {int(empty.sum())} empty values "
                        f"(first at row {int(empty.to_numpy().argmax())})")
    return frame[text].astype(str).to_numpy(dtype=object), frame[label].to_numpy()


def _table_to_arrays(frame, path: Path, label: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    import pandas as pd

    _require_column(frame, path, label, "label")
    if len(frame) == 0:
        raise DataError(f"data file '{path}' has a header but no rows")
    features = frame.drop(columns=[label])
    if features.shape[1] == 0:
        raise DataError(f"data file '{path}' has only the label column '{label}', no features")
    for column in features.columns:
        if not pd.api.types.is_numeric_dtype(features[column]) or pd.api.types.is_bool_dtype(
            features[column]
        ):
            converted = pd.to_numeric(features[column], errors="coerce")
            bad = features[column][converted.isna() & features[column].notna()]
            example = bad.iloc[0] if len(bad) else features[column].iloc[0]
            raise DataError(
                f"data file '{path}': feature column '{column}' is not numeric "
                f"(e.g. {example!r} in row {bad.index[0] if len(bad) else 0}); "
                "encode it as numbers before training"
            )
    labels = frame[label].to_numpy()
    if pd.isna(frame[label]).any():
        empty = int(pd.isna(frame[label]).sum())
        raise DataError(f"data file '{path}': label column '{label}' has {empty} empty values")
    return features.to_numpy(dtype=np.float32), labels, [str(c) for c in features.columns]


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"data file '{path}' could not be read as .npz: {exc}") from None
    missing = [key for key in ("x", "y") if key not in archive.files]
    if missing:
        raise DataError(f"data file '{path}' lacks array(s) {missing}; expected 'x' (features) "
                        f"and 'y' (labels), found {archive.files}")
    x, y = archive["x"], archive["y"]
    if x.dtype.kind not in "biuf":
        raise DataError(f"data file '{path}': array 'x' has dtype {x.dtype}, expected numbers")
    if len(x) == 0:
        raise DataError(f"data file '{path}': array 'x' has no rows")
    if len(x) != len(y):
        raise DataError(f"data file '{path}': 'x' has {len(x)} rows but 'y' has {len(y)}")
    return x.astype(np.float32), y


def read_raw(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, list[str] | None, str]:
    """Features, raw labels, feature names and a human-readable source description."""
    if cfg.source == "reviews":
        x, y, _, _ = _builtin(cfg.source)
        return x, y, None, "generated:reviews"
    if cfg.source in ("digits", "breast_cancer"):
        x, y, names, _ = _builtin(cfg.source)
        return x, y, names, f"sklearn:{cfg.source}"
    if cfg.source in ("mnist", "fashion_mnist", "cifar10", "imdb"):
        from maas import keras_datasets

        x, y = keras_datasets.load(cfg.source)
        return x, y, None, f"keras:{cfg.source}"
    path = Path(cfg.path or "").expanduser()
    _check_file(path)
    if cfg.text_column and cfg.source != "npz":
        x, y = _table_to_text(_read_table(path, cfg.source), path, cfg.label_column, cfg.text_column)
        return x, y, [cfg.text_column], f"{cfg.source}:{path.resolve()}"
    if cfg.source == "npz":
        x, y = _read_npz(path)
        names = None
        column = "'x'"
    else:
        frame = _read_table(path, cfg.source)
        x, y, names = _table_to_arrays(frame, path, cfg.label_column)
        column = None
    _check_finite(x, path, names, column)
    return x, y, names, f"{cfg.source}:{path.resolve()}"


def _check_finite(x: np.ndarray, path: Path, names: list[str] | None, column: str | None) -> None:
    bad_rows = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if not bad_rows.any():
        return
    if names:
        bad_cols = ~np.isfinite(x).all(axis=0)
        where = "column(s) " + ", ".join(f"'{n}'" for n, bad in zip(names, bad_cols, strict=True) if bad)
    else:
        where = f"array {column}"
    raise DataError(
        f"data file '{path}': {int(bad_rows.sum())} row(s) hold NaN or infinity in {where} "
        f"(first at row {int(np.argmax(bad_rows))}); fix or drop them before training"
    )


# ---------------------------------------------------------------------------------------------
# Splitting


def encode_labels(raw: np.ndarray, declared: list[Any] | None = None) -> tuple[np.ndarray, list[Any]]:
    """Map labels to 0..K-1; classes keep the original values (JSON-able).

    With ``declared`` classes, their order fixes the indices and any other label is refused.
    """
    if declared is not None:
        return _encode_declared(raw, declared)
    classes, encoded = np.unique(raw, return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"labels hold a single class ({classes.tolist()}); a classifier needs at least 2")
    return encoded.astype(np.int32), [c.item() if hasattr(c, "item") else c for c in classes]


def _encode_declared(raw: np.ndarray, declared: list[Any]) -> tuple[np.ndarray, list[Any]]:
    if len(set(map(str, declared))) != len(declared) or len(declared) < 2:
        raise DataError(f"data.classes must list at least 2 distinct labels, got {declared}")
    index = {str(label): i for i, label in enumerate(declared)}
    as_text = np.array([_label_text(v) for v in raw])
    unknown = sorted(set(as_text.tolist()) - set(index))
    if unknown:
        count = int(np.isin(as_text, unknown).sum())
        raise DataError(f"{count} row(s) have labels {unknown[:10]} outside the declared "
                        f"data.classes {declared}")
    return np.array([index[v] for v in as_text], dtype=np.int32), list(declared)


def _label_text(value: Any) -> str:
    # 3.0 read from a CSV and a declared 3 are the same class
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def fingerprint(x: np.ndarray, y: np.ndarray) -> str:
    digest = hashlib.sha256()
    if x.dtype == object:  # text
        digest.update("\0".join(map(str, x)).encode())
    else:
        digest.update(np.ascontiguousarray(x).tobytes())
    digest.update(np.ascontiguousarray(y).tobytes())
    return digest.hexdigest()[:16]


def split_indices(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int):
    """Stratified where every class has enough rows; plain shuffled split otherwise."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    counts = np.bincount(labels)
    stratify = labels if counts.min() >= 3 else None
    n_holdout = val_fraction + test_fraction
    try:
        train, holdout = train_test_split(
            indices, test_size=n_holdout, random_state=seed, stratify=stratify
        )
        hold_labels = labels[holdout] if stratify is not None else None
        val, test = train_test_split(
            holdout, test_size=test_fraction / n_holdout, random_state=seed, stratify=hold_labels
        )
    except ValueError as exc:
        raise DataError(f"cannot split {len(labels)} rows into train/validation/test: {exc}") from None
    return np.sort(train), np.sort(val), np.sort(test)


def load_dataset(cfg: DataConfig) -> Splits:
    x, raw_labels, names, source = read_raw(cfg)
    y, classes = encode_labels(raw_labels, cfg.classes)
    train, val, test = split_indices(y, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    schema = DataSchema(
        input_shape=tuple(int(d) for d in x.shape[1:]),
        classes=classes,
        dtype="string" if x.dtype == object else "float32",
        feature_names=names,
        source=source,
    )
    return Splits(
        x[train], y[train], x[val], y[val], x[test], y[test], schema, fingerprint(x, y)
    )


def shard_indices(num_rows: int, rank: int, world_size: int, seed: int) -> np.ndarray:
    """Rows worker ``rank`` trains on: disjoint across ranks, together covering every row.

    One seeded permutation shared by all workers, cut into ``world_size`` near-equal pieces, so
    every worker sees a random sample of the classes rather than a contiguous block.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of {world_size}")
    permutation = np.random.default_rng(seed).permutation(num_rows)
    return np.sort(np.array_split(permutation, world_size)[rank])


def feature_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
    """Per-feature mean and variance, baked into the model's Normalization layer.

    A feature constant in training (a digit's blank corner pixel) gets variance 1, not 0: dividing
    by ~0 would turn any non-zero value seen at serving time into an enormous input.
    """
    if x.dtype == object:  # text: no numeric statistics; the model tokenises instead
        return None, None
    variance = x.var(axis=0)
    return x.mean(axis=0), np.where(variance > 1e-12, variance, 1.0)
