"""Sharded data sets: ``data.path`` a directory or glob of npz or parquet files on storage every
node sees, and each training worker reading only its own files (docs/data.md).

* ``discover``: the files, sorted; worker ``r`` of ``w`` gets ``files[r::w]`` (``assign``).
* Every file is split into train/validation/test on its own (``split_indices``, the job's
  fractions and seed, stratified on that file's labels), so a worker splits its files without
  seeing the others, and the same file always splits the same way.
* The driver never holds more than one file: ``survey`` reads npz headers / parquet metadata and
  the label arrays (row counts, classes, agreement of shapes and columns), then ``scan_shards``
  streams the files one at a time to add up the training parts' feature mean and variance, the
  split sizes and the fingerprint. ``ShardedData.worker_plan`` is what travels to the workers.
* The test parts are streamed the same way, one file at a time (``iter_test_parts``): the driver
  evaluates the trained model on every shard's test rows after training.
"""

from __future__ import annotations

import glob
import hashlib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maas.config import IMPUTING, DataConfig
from maas.data import (
    DataSchema,
    Features,
    Splits,
    _label_text,
    _read_npz,
    _read_table,
    _table_to_arrays,
    apply_missing,
    encode_labels,
    fingerprint,
    split_indices,
)
from maas.errors import ConfigError, DataError

SHARDABLE = {"npz": ".npz", "parquet": ".parquet"}  # source -> file suffix in a directory
GLOB_CHARS = "*?["
SAMPLE_ROWS = 1024  # validation rows the driver keeps: the SavedModel check at publish uses them


# ---------------------------------------------------------------------------------------------
# Which files, and which worker reads which


def is_sharded(cfg: DataConfig) -> bool:
    """Whether ``data.path`` names several files (a directory or a glob) rather than one file."""
    if not cfg.path or "://" in cfg.path:
        return False
    path = Path(cfg.path).expanduser()
    if path.is_file():  # an existing file whose name happens to hold '[' is still one file
        return False
    sharded = path.is_dir() or any(c in cfg.path for c in GLOB_CHARS)
    if sharded and cfg.source not in SHARDABLE:
        raise ConfigError(f"data.path '{cfg.path}' is a directory or glob, which is for npz and parquet "
                          f"shard files; data.source '{cfg.source}' reads one file")
    if sharded:
        _check_supported(cfg)
    return sharded


def _check_supported(cfg: DataConfig) -> None:
    # Median fill values and vocabularies need every training row at once; the streamed pass
    # computes means, variances and counts only.
    unsupported = [name for name, on in (("data.text_column", cfg.text_column),
                                         ("data.categorical_columns", cfg.categorical_columns),
                                         ("data.missing=impute_median", cfg.missing == "impute_median"))
                   if on]
    if unsupported:
        raise ConfigError(f"{', '.join(unsupported)} cannot be used with sharded data (data.path "
                          f"'{cfg.path}'): merge the shards into one file, or leave it out")


def discover(cfg: DataConfig) -> list[Path]:
    """The shard files, sorted by path: a directory's ``*.npz`` / ``*.parquet`` files (hidden
    files and others, such as ``_SUCCESS`` markers, left out), or what a glob matches."""
    path = Path(cfg.path or "").expanduser()
    suffix = SHARDABLE[cfg.source]
    if path.is_dir():
        files = [p for p in path.iterdir()
                 if p.is_file() and p.name.endswith(suffix) and not p.name.startswith((".", "_"))]
        what = f"directory '{path}' holds no {suffix} file"
    else:
        files = [Path(p) for p in glob.glob(str(path)) if Path(p).is_file()]
        what = f"data.path '{cfg.path}' matches no file"
    if not files:
        raise DataError(f"{what}; data.source '{cfg.source}' needs at least one shard file")
    return sorted(p.resolve() for p in files)


def assign(files: list[str], world: int) -> list[list[str]]:
    """Files per rank, round-robin over the sorted list: rank r reads ``files[r::world]``."""
    if world < 1:
        raise ValueError(f"world size must be at least 1, got {world}")
    if len(files) < world:
        raise ConfigError(f"the sharded data set has {len(files)} file(s) but scaling.num_workers is "
                          f"{world}: every worker needs at least one file of its own; use at most "
                          f"{len(files)} workers, or write the data as more files")
    return [files[rank::world] for rank in range(world)]


# ---------------------------------------------------------------------------------------------
# The first pass: headers, row counts and labels (no feature values read)


@dataclass(frozen=True)
class FileHeader:
    path: str
    rows: int
    layout: str  # npz: x's per-row shape and dtype kind; parquet: the columns and their types
    labels: np.ndarray  # the distinct raw labels


def _npy_header(archive: zipfile.ZipFile, name: str, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    with archive.open(f"{name}.npy") as stream:
        version = np.lib.format.read_magic(stream)
        if version not in readers:
            raise DataError(f"data file '{path}': array '{name}' has .npy format {version}, "
                            "expected 1.0 or 2.0")
        shape, _, dtype = readers[version](stream)
    return shape, dtype


def _npz_header(path: Path) -> FileHeader:
    try:
        with zipfile.ZipFile(path) as archive:
            names = {n.removesuffix(".npy") for n in archive.namelist()}
            missing = [key for key in ("x", "y") if key not in names]
            if missing:
                raise DataError(f"data file '{path}' lacks array(s) {missing}; expected 'x' (features) "
                                f"and 'y' (labels), found {sorted(names)}")
            x_shape, x_dtype = _npy_header(archive, "x", path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"data file '{path}' could not be read as .npz: {exc}") from None
    if x_dtype.kind not in "biuf":
        raise DataError(f"data file '{path}': array 'x' has dtype {x_dtype}, expected numbers")
    if not x_shape or x_shape[0] == 0:
        raise DataError(f"data file '{path}': array 'x' has no rows")
    with np.load(path, allow_pickle=False) as archive:
        labels = archive["y"]  # only this member is read
    if len(labels) != x_shape[0]:
        raise DataError(f"data file '{path}': 'x' has {x_shape[0]} rows but 'y' has {len(labels)}")
    layout = f"x rows of shape {list(x_shape[1:])} ({x_dtype.kind}), y of kind {labels.dtype.kind}"
    return FileHeader(str(path), int(x_shape[0]), layout, np.unique(labels))


def _parquet_header(path: Path, label: str) -> FileHeader:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
        if label not in schema.names:
            raise DataError(f"data file '{path}' has no label column '{label}'; its columns are: "
                            f"{', '.join(schema.names[:20])}")
        labels = parquet.read(columns=[label]).column(label).to_numpy(zero_copy_only=False)
    except DataError:
        raise
    except Exception as exc:  # a parser error: say which file and what the parser saw
        raise DataError(f"data file '{path}' could not be read as parquet: {exc}") from None
    # names only: an integer column in one file may be a float column (with gaps) in another
    layout = "columns " + ", ".join(n for n in schema.names if not n.startswith("__index"))
    present = labels[~_is_missing(labels)]
    return FileHeader(str(path), parquet.metadata.num_rows, layout, np.unique(present))


def _is_missing(values: np.ndarray) -> np.ndarray:
    import pandas as pd

    return np.asarray(pd.isna(values), dtype=bool)


def survey(cfg: DataConfig, files: list[Path]) -> list[FileHeader]:
    """Each file's header and labels; refuses files whose shapes or columns disagree."""
    headers = [_npz_header(p) if cfg.source == "npz" else _parquet_header(p, cfg.label_column)
               for p in files]
    first = headers[0]
    for header in headers[1:]:
        if header.layout != first.layout:
            raise DataError(f"shard files disagree: '{header.path}' has {header.layout}, but "
                            f"'{first.path}' has {first.layout}; every file of a sharded data set "
                            "needs the same columns (or array shapes)")
    return headers


def shard_classes(cfg: DataConfig, headers: list[FileHeader]) -> list[Any]:
    """The data set's classes from every file's distinct labels: as ``encode_labels`` gives them
    for all rows together (sorted values, or ``data.classes`` in its order)."""
    if cfg.classes is not None:
        declared = {_label_text(c) for c in cfg.classes}
        for header in headers:  # name the file; the first pass read its distinct labels only
            unknown = sorted({_label_text(v) for v in header.labels.tolist()} - declared)
            if unknown:
                raise DataError(f"data file '{header.path}' has labels {unknown[:10]} outside the "
                                f"declared data.classes {cfg.classes}")
    distinct = np.unique(np.concatenate([h.labels for h in headers]))
    return encode_labels(distinct, cfg.classes)[1]


# ---------------------------------------------------------------------------------------------
# One file: read, apply data.missing, split, encode


@dataclass
class FileParts:
    """One shard file as read, its split (indices into its rows) and labels encoded 0..K-1."""

    path: str
    x: np.ndarray
    y: np.ndarray
    names: list[str] | None
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    dropped: int = 0


def read_rows(path: Path, cfg: DataConfig) -> tuple[Features, np.ndarray]:
    """The one place a shard's feature values are read (workers' opened-file lists come from it)."""
    if cfg.source == "npz":
        x, y = _read_npz(path)
        return Features(x), y
    return _table_to_arrays(_read_table(path, "parquet"), path, cfg.label_column)


def split_file(raw_labels: np.ndarray, cfg: DataConfig, where: str):
    """A file's train/validation/test rows: stratified on its own labels, so the split depends
    on the file alone (not on which other files exist or which worker reads it)."""
    codes = np.unique(raw_labels, return_inverse=True)[1].reshape(-1)
    try:
        return split_indices(codes, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from None


def encode_with(raw: np.ndarray, classes: list[Any], declared: bool, where: str) -> np.ndarray:
    """Labels as indices into the data set's ``classes`` (found over all files)."""
    if declared:
        try:
            return encode_labels(raw, classes)[0]
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None
    distinct, inverse = np.unique(raw, return_inverse=True)
    index = {_key(c): i for i, c in enumerate(classes)}
    unknown = [d for d in distinct.tolist() if _key(d) not in index]
    if unknown:  # the first pass saw every label: the file changed in between
        raise DataError(f"{where}: labels {unknown[:10]} were not there when the files were surveyed; "
                        "did the file change during the job?")
    lookup = np.array([index[_key(d)] for d in distinct.tolist()], dtype=np.int32)
    return lookup[inverse.reshape(-1)]


def _key(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def read_parts(path: Path, cfg: DataConfig, classes: list[Any]) -> FileParts:
    where = f"data file '{path}'"
    features, raw = read_rows(path, cfg)
    features, raw, dropped = apply_missing(features, raw, cfg, where)
    train, val, test = split_file(raw, cfg, where)
    y = encode_with(raw, classes, cfg.classes is not None, where)
    return FileParts(str(path), features.values, y, features.names, train, val, test, dropped)


# ---------------------------------------------------------------------------------------------
# The driver's streamed pass


class RunningStats:
    """Per-feature count, mean and sum of squared deviations of the values present (NaN left
    out), merged file by file with Chan et al.'s pairwise update: exact, and stable where a sum
    of squares would cancel."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.count = np.zeros(shape)
        self.mean = np.zeros(shape)
        self.m2 = np.zeros(shape)

    def add(self, x: np.ndarray) -> None:
        values = x.astype(np.float64)
        present = ~np.isnan(values)
        count = present.sum(axis=0).astype(np.float64)
        total = np.where(present, values, 0.0).sum(axis=0)
        mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
        m2 = (np.where(present, values - mean, 0.0) ** 2).sum(axis=0)
        merged = self.count + count
        delta = mean - self.mean
        safe = np.where(merged > 0, merged, 1.0)
        self.mean = self.mean + delta * count / safe
        self.m2 = self.m2 + m2 + delta**2 * self.count * count / safe
        self.count = merged

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """As ``feature_stats`` gives them: float32, a feature with no value gets mean 0, and a
        constant (or absent) feature gets variance 1."""
        present = self.count > 0
        mean = np.where(present, self.mean, 0.0)
        variance = np.divide(self.m2, self.count, out=np.ones_like(self.m2), where=present)
        variance = np.where(variance > 1e-12, variance, 1.0)
        return mean.astype(np.float32), variance.astype(np.float32)


@dataclass(frozen=True)
class ShardFile:
    path: str
    train: int
    val: int
    test: int
    dropped: int = 0


@dataclass
class ShardedData:
    """What the driver knows of a sharded data set without holding its rows: per-file split
    sizes, the schema, the training parts' feature statistics and a few validation rows."""

    cfg: DataConfig
    files: list[ShardFile]
    schema: DataSchema
    mean: np.ndarray
    variance: np.ndarray
    fingerprint: str
    x_val: np.ndarray  # a sample: at most SAMPLE_ROWS validation rows (SavedModel check)
    y_val: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))

    def sizes(self) -> dict[str, int]:
        return {part: sum(getattr(f, part) for f in self.files) for part in ("train", "val", "test")}

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.files]

    def train_rows_per_rank(self, world: int) -> list[int]:
        rows = {f.path: f.train for f in self.files}
        return [sum(rows[p] for p in paths) for paths in assign(self.paths, world)]

    def steps_per_epoch(self, world: int, batch: int) -> int:
        """Steps every worker runs per epoch (MultiWorkerMirroredStrategy needs the same count
        on every rank): the smallest rank's training rows // batch."""
        return min(self.train_rows_per_rank(world)) // batch

    def worker_plan(self, world: int, batch: int) -> dict[str, Any]:
        """What the workers need (plain data across the Ray boundary): every rank picks its own
        files from the list."""
        return {"files": self.paths, "classes": self.schema.classes, "schema": self.schema.to_dict(),
                "mean": self.mean.tolist(), "variance": self.variance.tolist(),
                "fingerprint": self.fingerprint, "steps": self.steps_per_epoch(world, batch)}

    def assignment_lines(self, world: int) -> list[str]:
        rows = self.train_rows_per_rank(world)
        return [f"[data] rank {rank} reads {len(paths)} of {len(self.files)} shard files "
                f"({rows[rank]} training rows): {', '.join(Path(p).name for p in paths)}"
                for rank, paths in enumerate(assign(self.paths, world))]


def _preprocessing(cfg: DataConfig, stats: RunningStats, dropped: int) -> dict[str, Any] | None:
    """``fit_preprocessing``'s block for numeric shards: fill values are the training parts'
    means of the values present (``impute_median`` is refused for shards)."""
    if cfg.missing == "refuse":
        return None
    block: dict[str, Any] = {"missing": cfg.missing}
    if cfg.missing == "drop":
        block["rows_dropped"] = dropped
    if cfg.missing in IMPUTING:
        never = stats.count == 0
        if never.any():
            index = tuple(int(i) for i in np.argwhere(never)[0])
            raise DataError(f"feature {index} has no value in any row of the training split, so "
                            f"data.missing={cfg.missing} has nothing to compute its fill value from")
        block["fill"] = stats.mean.tolist()
    return block


def scan_shards(cfg: DataConfig) -> ShardedData:
    """The driver's view of a sharded data set, reading one file at a time."""
    files = discover(cfg)
    headers = survey(cfg, files)
    classes = shard_classes(cfg, headers)
    stats, digest, summary = None, hashlib.sha256(), []
    sample_x, sample_y, names = [], [], None
    for path in files:
        parts = read_parts(path, cfg, classes)
        stats = stats or RunningStats(parts.x.shape[1:])
        stats.add(parts.x[parts.train])
        digest.update(fingerprint(parts.x, parts.y).encode())
        summary.append(ShardFile(parts.path, len(parts.train), len(parts.val), len(parts.test),
                                 parts.dropped))
        wanted = max(0, SAMPLE_ROWS - sum(map(len, sample_x)))
        sample_x.append(parts.x[parts.val[:wanted]])
        sample_y.append(parts.y[parts.val[:wanted]])
        names = parts.names
    mean, variance = stats.result()
    schema = _schema(cfg, classes, sample_x[0].shape[1:], names,
                     _preprocessing(cfg, stats, sum(f.dropped for f in summary)), len(files))
    return ShardedData(cfg, summary, schema, mean, variance, digest.hexdigest()[:16],
                       np.concatenate(sample_x), np.concatenate(sample_y))


def _schema(cfg: DataConfig, classes: list[Any], shape: tuple[int, ...], names: list[str] | None,
            preprocessing: dict[str, Any] | None, count: int) -> DataSchema:
    return DataSchema(input_shape=tuple(int(d) for d in shape), classes=classes, dtype="float32",
                      feature_names=names, source=f"{cfg.source}:{cfg.path} ({count} shard files)",
                      preprocessing=preprocessing)


def iter_test_parts(data: ShardedData) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every file's test rows, one file at a time (only one file is held at once)."""
    for shard in data.files:
        parts = read_parts(Path(shard.path), data.cfg, data.schema.classes)
        yield parts.x[parts.test], parts.y[parts.test]


# ---------------------------------------------------------------------------------------------
# A worker's files; everything at once (tuning and optimise drivers)


@dataclass
class WorkerShards:
    splits: Splits  # this rank's train and validation parts; no test rows (the driver tests)
    files: list[str]  # the files this rank opened, in order


def load_rank_shards(plan: dict[str, Any], cfg: DataConfig, rank: int, world: int) -> WorkerShards:
    """Worker ``rank``'s own files (``files[rank::world]``), and no other, split and encoded."""
    mine = assign(list(plan["files"]), world)[rank]
    parts = [read_parts(Path(p), cfg, plan["classes"]) for p in mine]
    schema = DataSchema.from_dict(plan["schema"])
    for part in parts:  # the test rows are the driver's to evaluate: do not hold them here
        part.test = part.test[:0]
    return WorkerShards(_splits(parts, schema, plan["fingerprint"]), [p.path for p in parts])


def _splits(parts: list[FileParts], schema: DataSchema, digest: str) -> Splits:
    def take(part: str) -> tuple[np.ndarray, np.ndarray]:
        x = np.concatenate([p.x[getattr(p, part)] for p in parts])
        return x, np.concatenate([p.y[getattr(p, part)] for p in parts]).astype(np.int32)

    return Splits(*take("train"), *take("val"), *take("test"), schema, digest)


def load_all_shards(cfg: DataConfig) -> Splits:
    """Every file's parts concatenated in file order, with the schema and fingerprint that
    ``scan_shards`` gives (for drivers that need every row: tuning, optimise, tests)."""
    data = scan_shards(cfg)
    parts = [read_parts(Path(p), cfg, data.schema.classes) for p in data.paths]
    return _splits(parts, data.schema, data.fingerprint)


def write_shards(x: np.ndarray, y: np.ndarray, directory: Path, count: int,
                 prefix: str = "part") -> list[Path]:
    """Cut arrays into ``count`` npz files of near-equal rows (``part-00000.npz``, ...)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, rows in enumerate(np.array_split(np.arange(len(x)), count)):
        path = directory / f"{prefix}-{index:05d}.npz"
        np.savez(path, x=x[rows], y=y[rows])
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    """``python -m maas.shards DIR [--files N] [--rows R]``: the digits as npz shard files (the
    data of configs/train/digits_shards.yaml)."""
    import argparse

    from sklearn import datasets

    parser = argparse.ArgumentParser(prog="python -m maas.shards", description=main.__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--rows", type=int, default=None, help="first R rows only (default: all)")
    args = parser.parse_args(argv)
    digits = datasets.load_digits()
    x, y = digits.images.astype(np.float32)[:args.rows], digits.target[:args.rows]
    for path in write_shards(x, y, args.directory, args.files):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
