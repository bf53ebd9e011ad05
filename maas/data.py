"""Data sets -> train/validation/test splits + a schema. No model code lives here.

Policy for bad values: by default (``data.missing: refuse``) rows holding NaN or infinity are
refused, not dropped, with the column and row count named, because silently training on fewer rows
hides a broken upstream export. A job can choose otherwise for empty values (never for infinity):
``drop`` drops the rows holding them and says how many; ``impute_mean``/``impute_median`` keep
them and record fill values computed on the training split only in ``schema.preprocessing``, from
which ``build_model`` puts them inside the model (``maas/preprocessing.py``), so serving fills a
missing value exactly as training did.

Categorical columns (``data.categorical_columns``) make the table a ``"table"`` schema: every
feature value travels as text in one string matrix ``[n, columns]`` (numbers as their shortest
decimal text, an empty category as ``""``), the vocabularies (from the training split) and the
numeric columns' statistics sit in ``schema.preprocessing``, and the model parses, fills,
normalises and looks up inside itself.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maas.config import IMPUTING, DataConfig
from maas.errors import DataError

TABLE = "table"  # DataSchema.dtype of a table with categorical columns (one string matrix in)


@dataclass(frozen=True)
class DataSchema:
    """What a model consumes and produces: travels into the registry and to serving."""

    input_shape: tuple[int, ...]
    classes: list[Any]
    dtype: str = "float32"  # "float32"; "string": one text per row; "table": see the docstring
    feature_names: list[str] | None = None
    source: str = ""
    # What the model does to its input, fitted on the training split (None: nothing beyond
    # normalisation): {"missing", "fill", "rows_dropped", and for tables "numeric_columns", "mean",
    # "variance", "categorical": {column: vocabulary}, "encoding", "embedding_dim"}; docs/preprocessing.md
    preprocessing: dict[str, Any] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) in (2, 3)

    @property
    def is_text(self) -> bool:
        return self.dtype == "string"

    @property
    def is_table(self) -> bool:
        """Numeric and categorical columns, sent to the model as one string matrix."""
        return self.dtype == TABLE

    @property
    def string_input(self) -> bool:
        """Whether the model's one input is a string tensor (text, or a table)."""
        return self.dtype in ("string", TABLE)

    @property
    def accepts_missing(self) -> bool:
        """Whether the model fills empty values itself (trained with an imputing data.missing)."""
        return (self.preprocessing or {}).get("missing") in IMPUTING

    @property
    def categorical(self) -> dict[str, list[str]]:
        """Categorical column -> its vocabulary (empty for a model without categorical columns)."""
        return dict((self.preprocessing or {}).get("categorical") or {})

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


def _table_to_arrays(frame, path: Path, label: str,
                     categorical: list[str] = ()) -> tuple[Features, np.ndarray]:
    import pandas as pd

    _require_column(frame, path, label, "label")
    if len(frame) == 0:
        raise DataError(f"data file '{path}' has a header but no rows")
    features = frame.drop(columns=[label])
    if features.shape[1] == 0:
        raise DataError(f"data file '{path}' has only the label column '{label}', no features")
    absent = [c for c in categorical if c not in features.columns]
    if absent:
        columns = ", ".join(map(str, features.columns[:20]))
        raise DataError(f"data.categorical_columns names {absent}, which data file '{path}' lacks; "
                        f"its feature columns are: {columns}")
    numeric = [c for c in features.columns if c not in categorical]
    for column in numeric:
        if not pd.api.types.is_numeric_dtype(features[column]) or pd.api.types.is_bool_dtype(
            features[column]
        ):
            converted = pd.to_numeric(features[column], errors="coerce")
            bad = features[column][converted.isna() & features[column].notna()]
            example = bad.iloc[0] if len(bad) else features[column].iloc[0]
            raise DataError(
                f"data file '{path}': feature column '{column}' is not numeric "
                f"(e.g. {example!r} in row {bad.index[0] if len(bad) else 0}); "
                "encode it as numbers before training, or list it in data.categorical_columns"
            )
    labels = frame[label].to_numpy()
    if pd.isna(frame[label]).any():
        empty = int(pd.isna(frame[label]).sum())
        raise DataError(f"data file '{path}': label column '{label}' has {empty} empty values")
    names = [str(c) for c in features.columns]
    if not categorical:
        return Features(features.to_numpy(dtype=np.float32), names), labels
    kinds = ["categorical" if c in categorical else "numeric" for c in features.columns]
    categories = np.stack([features[c].map(category_text).to_numpy(dtype=object) for c in categorical],
                          axis=1)
    return Features(features[numeric].to_numpy(dtype=np.float32), names, categories, kinds), labels


def category_text(value: Any) -> str:
    """A category as the model sees it: the empty string when missing, an integral number without
    its '.0' (the CSV reader makes 3 into 3.0 in a column with gaps), anything else as text."""
    if value is None or isinstance(value, (float, np.floating)) and np.isnan(value):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return str(value)


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


@dataclass
class Features:
    """A data set's features as read: ``values`` holds the numbers (float32, NaN where empty; or
    the texts of a text set). With categorical columns, ``categories`` holds them as text
    (``""`` where empty) and ``kinds`` says which of ``names`` is which, in file order."""

    values: np.ndarray
    names: list[str] | None = None
    categories: np.ndarray | None = None  # object [n, categorical columns]
    kinds: list[str] | None = None  # "numeric" | "categorical" per name

    def __len__(self) -> int:
        return len(self.values)

    def take(self, rows: np.ndarray) -> Features:
        categories = None if self.categories is None else self.categories[rows]
        return Features(self.values[rows], self.names, categories, self.kinds)

    @property
    def categorical_names(self) -> list[str]:
        return [n for n, k in zip(self.names or [], self.kinds or [], strict=True) if k == "categorical"]

    @property
    def numeric_names(self) -> list[str] | None:
        if self.kinds is None:
            return self.names
        return [n for n, k in zip(self.names or [], self.kinds, strict=True) if k == "numeric"]


def read_raw(cfg: DataConfig) -> tuple[Features, np.ndarray, str]:
    """Features, raw labels and a human-readable source description. Empty values are still in
    the features; ``apply_missing`` applies ``data.missing`` to them."""
    if cfg.source == "reviews":
        x, y, _, _ = _builtin(cfg.source)
        return Features(x), y, "generated:reviews"
    if cfg.source in ("digits", "breast_cancer"):
        x, y, names, _ = _builtin(cfg.source)
        return Features(x, names), y, f"sklearn:{cfg.source}"
    if cfg.source in ("mnist", "fashion_mnist", "cifar10", "imdb"):
        from maas import keras_datasets

        x, y = keras_datasets.load(cfg.source)
        return Features(x), y, f"keras:{cfg.source}"
    path = Path(cfg.path or "").expanduser()
    _check_file(path)
    source = f"{cfg.source}:{path.resolve()}"
    if cfg.text_column and cfg.source != "npz":
        x, y = _table_to_text(_read_table(path, cfg.source), path, cfg.label_column, cfg.text_column)
        return Features(x, [cfg.text_column]), y, source
    if cfg.source == "npz":
        x, y = _read_npz(path)
        return Features(x), y, source
    features, y = _table_to_arrays(_read_table(path, cfg.source), path, cfg.label_column,
                                   list(cfg.categorical_columns))
    return features, y, source


def apply_missing(features: Features, labels: np.ndarray, cfg: DataConfig,
                  where: str) -> tuple[Features, np.ndarray, int]:
    """``data.missing`` on the rows as read: refuse (the default) stops at the first empty value,
    drop removes the rows holding one, the imputing policies keep them for the model to fill.
    Infinity is refused under every policy. Returns the rows kept and how many were dropped."""
    values = features.values
    if values.dtype == object:  # texts: _table_to_text refuses empty ones
        return features, labels, 0
    flat = values.reshape(len(values), -1)
    if cfg.missing == "refuse":
        _check_finite(values, where, features.numeric_names)
        _check_categories_present(features, where)
        return features, labels, 0
    _check_no_infinity(flat, where, features.numeric_names)
    if cfg.missing != "drop":
        return features, labels, 0
    empty = np.concatenate([np.isnan(flat), _empty_categories(features)], axis=1)
    empty_rows = empty.any(axis=1)
    if not empty_rows.any():
        return features, labels, 0
    kept = np.flatnonzero(~empty_rows)
    if not len(kept):
        raise DataError(f"{where}: each of its {len(values)} rows holds an empty value, so "
                        "data.missing=drop leaves nothing to train on; impute them instead")
    names = (features.numeric_names or []) + features.categorical_names
    detail = ""
    if len(names) == empty.shape[1]:
        detail = "; empty values per column: " + ", ".join(
            f"'{n}' {int(c)}" for n, c in zip(names, empty.sum(axis=0), strict=True) if c)
    dropped = len(values) - len(kept)
    print(f"[data] data.missing=drop: dropped {dropped} of {len(values)} rows of {where}{detail}",
          flush=True)
    return features.take(kept), labels[kept], dropped


def _empty_categories(features: Features) -> np.ndarray:
    if features.categories is None:
        return np.zeros((len(features), 0), dtype=bool)
    return features.categories == ""


def _check_categories_present(features: Features, where: str) -> None:
    empty = _empty_categories(features)
    rows = empty.any(axis=1)
    if rows.any():
        columns = ", ".join(f"'{n}'" for n, e in zip(features.categorical_names, empty.any(axis=0),
                                                     strict=True) if e)
        raise DataError(
            f"{where}: {int(rows.sum())} row(s) hold empty values in categorical column(s) {columns} "
            f"(first at row {int(np.argmax(rows))}); fix or drop them before training (or set "
            "data.missing to drop or impute empty values)")


def _bad_values_where(bad_cols: np.ndarray, names: list[str] | None) -> str:
    if names and len(names) == len(bad_cols):
        return "column(s) " + ", ".join(f"'{n}'" for n, bad in zip(names, bad_cols, strict=True) if bad)
    return "array 'x'"


def _check_finite(x: np.ndarray, where: str, names: list[str] | None) -> None:
    flat = x.reshape(len(x), -1)
    bad_rows = ~np.isfinite(flat).all(axis=1)
    if not bad_rows.any():
        return
    in_columns = _bad_values_where(~np.isfinite(flat).all(axis=0), names)
    raise DataError(
        f"{where}: {int(bad_rows.sum())} row(s) hold NaN or infinity in {in_columns} "
        f"(first at row {int(np.argmax(bad_rows))}); fix or drop them before training "
        "(or set data.missing to drop or impute empty values)"
    )


def _check_no_infinity(flat: np.ndarray, where: str, names: list[str] | None) -> None:
    infinite = np.isinf(flat)
    bad_rows = infinite.any(axis=1)
    if bad_rows.any():
        in_columns = _bad_values_where(infinite.any(axis=0), names)
        raise DataError(
            f"{where}: {int(bad_rows.sum())} row(s) hold infinity in {in_columns} "
            f"(first at row {int(np.argmax(bad_rows))}); infinity is not a missing value that "
            "data.missing could drop or fill: fix those rows before training")


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
    if x.dtype == object and x.ndim == 2:  # a table's text matrix
        digest.update("\0".join("\x1f".join(map(str, row)) for row in x).encode())
    elif x.dtype == object:  # text
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
    """Every row of the data set in memory, split. A sharded ``data.path`` (a directory or glob)
    gives its files' splits concatenated; training itself never calls this for shards: each
    worker reads only its own files (``maas/shards.py``)."""
    from maas import shards  # it builds on this module

    if cfg.source == "capture":  # a served model's captured traffic, labelled by its feedback
        from maas.capture import load_captured

        return load_captured(cfg)
    if shards.is_sharded(cfg):
        return shards.load_all_shards(cfg)
    features, raw_labels, source = read_raw(cfg)
    dropped = 0
    if cfg.path:  # built-in sets hold no empty or infinite values
        where = f"data file '{Path(cfg.path).expanduser()}'"
        features, raw_labels, dropped = apply_missing(features, raw_labels, cfg, where)
    y, classes = encode_labels(raw_labels, cfg.classes)
    train, val, test = split_indices(y, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    preprocessing = fit_preprocessing(features.take(train), cfg, dropped)
    table = features.categories is not None
    x = table_text(features) if table else features.values
    schema = DataSchema(
        input_shape=tuple(int(d) for d in x.shape[1:]),
        classes=classes,
        dtype=TABLE if table else "string" if x.dtype == object else "float32",
        feature_names=features.names,
        source=source,
        preprocessing=preprocessing,
    )
    return Splits(
        x[train], y[train], x[val], y[val], x[test], y[test], schema, fingerprint(x, y)
    )


def fit_preprocessing(train: Features, cfg: DataConfig, dropped: int = 0) -> dict[str, Any] | None:
    """What the model does to its input beyond normalisation, from the training split alone:
    fill values (imputing policies) and, for a table with categorical columns, the numeric
    columns' statistics and each categorical column's vocabulary. None when there is nothing."""
    table = train.categories is not None
    if cfg.missing == "refuse" and not table:
        return None
    block: dict[str, Any] = {"missing": cfg.missing}
    if cfg.missing == "drop":
        block["rows_dropped"] = dropped
    if cfg.missing in IMPUTING:
        block["fill"] = fill_values(train.values, cfg.missing, train.numeric_names).tolist()
    if table:
        mean, variance = feature_stats(train.values)
        block.update(
            numeric_columns=train.numeric_names, mean=mean.tolist(), variance=variance.tolist(),
            categorical={name: vocabulary(train.categories[:, i], cfg.max_categories)
                         for i, name in enumerate(train.categorical_names)},
            encoding=cfg.categorical_encoding, embedding_dim=cfg.categorical_embedding_dim)
    return block


def fill_values(x: np.ndarray, policy: str, names: list[str] | None = None) -> np.ndarray:
    """Per feature: the mean or median of the values present in ``x`` (the training split)."""
    present = ~np.isnan(x)
    never = ~present.any(axis=0)
    if never.any():
        index = np.argwhere(never)[0]
        what = f"column '{names[int(index[0])]}'" if names and never.ndim == 1 else \
            f"feature {tuple(int(i) for i in index)}"
        raise DataError(f"{what} has no value in any of the {len(x)} rows of the training split, so "
                        f"data.missing={policy} has nothing to compute its fill value from: drop the "
                        "column or fill it upstream")
    reduce = np.nanmean if policy == "impute_mean" else np.nanmedian
    return reduce(x.astype(np.float64), axis=0)


def vocabulary(values: np.ndarray, limit: int) -> list[str]:
    """A categorical column's vocabulary: its categories in the training split, most frequent
    first (ties in text order), at most ``limit``. The empty category (a missing value under an
    imputing policy) is kept like any other; the lookup layer's own unknown token is not."""
    categories, counts = np.unique(np.asarray(values, dtype=str), return_counts=True)
    order = sorted(range(len(categories)), key=lambda i: (-counts[i], categories[i]))
    return [str(categories[i]) for i in order if categories[i] != UNKNOWN_TOKEN][:limit]


UNKNOWN_TOKEN = "[UNK]"  # StringLookup's out-of-vocabulary token


def table_text(features: Features) -> np.ndarray:
    """A table as the model takes it: one string per cell, in file column order; numbers as their
    shortest float32 text ("nan" where empty), categories as ``category_text`` made them."""
    kinds = features.kinds or []
    text = np.empty((len(features), len(kinds)), dtype=object)
    numeric = [i for i, kind in enumerate(kinds) if kind == "numeric"]
    categorical = [i for i, kind in enumerate(kinds) if kind == "categorical"]
    if numeric:
        text[:, numeric] = features.values.astype(str)
    text[:, categorical] = features.categories
    return text


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
    by ~0 would turn any non-zero value seen at serving time into an enormous input. Empty (NaN)
    values, kept under an imputing ``data.missing``, are left out: the statistics are those of the
    values present, and the model normalises its filled-in values with them.
    """
    if x.dtype == object:  # text (tokenised) or a table (its statistics are in schema.preprocessing)
        return None, None
    mean, variance = x.mean(axis=0), x.var(axis=0)
    if not np.isfinite(mean).all():  # NaN present: only then pay for the NaN-aware pass
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a column with no value at all
            mean, variance = np.nanmean(x, axis=0), np.nanvar(x, axis=0)
        mean = np.where(np.isnan(mean), 0.0, mean).astype(x.dtype)
        variance = np.where(np.isnan(variance), 1.0, variance).astype(x.dtype)
    return mean, np.where(variance > 1e-12, variance, 1.0)
