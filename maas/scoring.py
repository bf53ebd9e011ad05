"""Batch scoring: ``python -m maas score --model NAME[:VERSION|:LABEL] --input IN --output OUT``.

A registered version scores a Parquet or CSV file (or directory of them, local or a filesystem URI)
on Ray Data: ``read_*`` -> ``map_batches`` over a pool of actors that each hold the model (loaded
the way serving loads it: signature and hash checked, allow-listed, decrypted in memory, on the
runtime its artefact needs) -> ``write_parquet``. Each output row carries the input's ``--keep``
columns, ``prediction`` (the class label), ``probability_<class>`` per class and ``model_version``.

The input is checked against the model's schema on the driver before any actor starts: which
columns feed the model, their types, and the first row holding a null, NaN or infinity (named by
row and column; a model that fills missing values itself, trained with an imputing
``data.missing``, takes nulls and NaN, never infinity). A model with categorical columns takes
its named columns as text cells, the way it was trained (``maas/preprocessing.py``).
A local output is written to a staging directory beside it and renamed into place
when every row is scored, so a failed run leaves nothing at ``--output``.
"""

from __future__ import annotations

import math
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maas.data import DataSchema, category_text
from maas.errors import ConfigError, DataError
from maas.storage import is_uri

FORMATS = ("parquet", "csv")

# Rows per model call when --batch-size is not given: as many as make about this much input (the
# digits MLP: 32,768 rows; a CIFAR image model: 682). Measured on the digits MLP's ONNX variant, 1M
# rows, 2 cores (bench/score_throughput.py --runtime onnxruntime [--batch-size 4096]): 4,096-row
# batches 8.8 s, 32,768-row batches 7.2-7.5 s (bench/results/score_throughput.txt). A text cell
# counts as 2 KiB, which keeps text models at 4,096 rows a call: an LSTM's activations, not its
# input, are what grows with the batch there.
BATCH_INPUT_BYTES = 8 << 20
TEXT_CELL_BYTES = 2048
BATCH_ROWS_RANGE = (64, 65536)


@dataclass(frozen=True)
class Features:
    """Which input columns feed the model, in order, and how a row becomes the model's input."""

    columns: tuple[str, ...]
    shape: tuple[int, ...]
    text: bool = False
    categorical: tuple[str, ...] = ()  # a table model's categorical columns (text cells in)
    missing_ok: bool = False  # the model fills missing values itself

    @property
    def table(self) -> bool:
        return bool(self.categorical)


@dataclass(frozen=True)
class ScoreSummary:
    name: str
    version: int
    rows: int
    seconds: float
    output: str
    actors: int

    def line(self) -> str:
        rate = self.rows / self.seconds if self.seconds else 0.0
        return (f"scored {self.rows} rows with {self.name} version {self.version} in {self.seconds:.1f}s "
                f"({rate:,.0f} rows/s, {self.actors} actors) -> {self.output}")


def input_format(path: str, declared: str | None = None) -> str:
    if declared:
        if declared not in FORMATS:
            raise ConfigError(f"--format {declared!r}: expected one of {', '.join(FORMATS)}")
        return declared
    suffix = Path(path.rstrip("/")).suffix.lower().lstrip(".")
    if suffix in FORMATS:
        return suffix
    if not suffix:  # a directory of files
        return "parquet"
    raise ConfigError(f"--input {path}: cannot tell its format from '.{suffix}' "
                      f"(expected {', '.join('.' + f for f in FORMATS)}, or pass --format)")


def feature_columns(schema: DataSchema, columns: dict[str, str], keep: tuple[str, ...] = ()) -> Features:
    """``columns``: name -> arrow type text of the input. Text models read their one text column;
    tabular models their named features; image-shaped models every other numeric column, in order."""
    missing_keep = [c for c in keep if c not in columns]
    if missing_keep:
        raise DataError(f"--keep names columns the input lacks: {', '.join(missing_keep)}")
    if schema.is_text:
        named = (schema.feature_names or [None])[0]
        texts = [named] if named in columns else [c for c, t in columns.items()
                                                  if _is_text(t) and c not in keep]
        if len(texts) != 1:
            raise DataError(f"a text model needs one text column{f' ({named!r})' if named else ''}; "
                            f"the input has {', '.join(f'{c} ({t})' for c, t in columns.items())}")
        return Features((texts[0],), (), text=True)
    if schema.feature_names:
        lacking = [c for c in schema.feature_names if c not in columns]
        if lacking:
            raise DataError(f"the input lacks the model's feature columns {', '.join(lacking[:5])}"
                            f"{' ...' if len(lacking) > 5 else ''} (it has {len(columns)} columns)")
        chosen = list(schema.feature_names)
    else:
        chosen = [c for c in columns if c not in keep]
    categorical = schema.categorical
    wrong = [f"{c} ({columns[c]})" for c in chosen if c not in categorical and not _is_number(columns[c])]
    if wrong:
        raise DataError(f"feature columns must be numeric; not: {', '.join(wrong[:5])}")
    wrong = [f"{c} ({columns[c]})" for c in chosen if c in categorical
             and not (_is_text(columns[c]) or columns[c].startswith(("int", "uint", "bool")))]
    if wrong:
        raise DataError(f"categorical columns must be text or integer codes; not: {', '.join(wrong[:5])}")
    needed = math.prod(schema.input_shape)
    if len(chosen) != needed:
        raise DataError(f"the input has {len(chosen)} feature columns; the model takes {needed} values "
                        f"per row (shape {list(schema.input_shape)}); pass --keep for id columns")
    return Features(tuple(chosen), tuple(schema.input_shape),
                    categorical=tuple(c for c in chosen if c in categorical),
                    missing_ok=schema.accepts_missing)


def _is_text(arrow_type: str) -> bool:
    return arrow_type in ("string", "large_string")


def _is_number(arrow_type: str) -> bool:
    return arrow_type.startswith(("int", "uint", "float", "double", "halffloat", "decimal"))


def first_bad_row(batches: Any, features: Features) -> str | None:
    """The first null, NaN or infinite value (for a model that fills missing values: the first
    infinite one), as 'row R, column C (value)'; None if all are fine. ``batches``: pyarrow record
    batches in file order."""
    import pyarrow as pa
    import pyarrow.compute as pc

    offset = 0
    for batch in batches:
        for column in features.columns:
            values = batch.column(column)
            if column in features.categorical:
                empty = pc.equal(pc.cast(values, pa.string()), "")
                bad = pc.or_(pc.is_null(values), pc.fill_null(empty, False))
                if features.missing_ok:
                    continue
            elif features.missing_ok:
                if not pa.types.is_floating(values.type):
                    continue  # integers: never infinite, and a null is a missing value it fills
                bad = pc.fill_null(pc.is_inf(values), False)
            else:
                bad = pc.is_null(values, nan_is_null=True)
                if not features.text:
                    bad = pc.or_(bad, pc.invert(pc.is_finite(pc.fill_null(values, 0))))
            index = pc.index(bad, True).as_py()
            if index >= 0:
                return f"row {offset + index}, column {column!r} ({values[index].as_py()!r})"
        offset += batch.num_rows
    return None


def auto_batch_size(features: Features) -> int:
    """Rows per model call: about ``BATCH_INPUT_BYTES`` of float32 input (a text cell counts as
    ``TEXT_CELL_BYTES``), within ``BATCH_ROWS_RANGE``."""
    # a row's values are the product of its shape (an empty shape: one value, as math.prod gives)
    per_row = TEXT_CELL_BYTES if features.text else 4 * max(1, math.prod(features.shape))
    low, high = BATCH_ROWS_RANGE
    return max(low, min(high, BATCH_INPUT_BYTES // per_row))


def rows_to_input(batch: dict[str, np.ndarray], features: Features) -> np.ndarray:
    if features.text:
        return np.asarray(batch[features.columns[0]], dtype=object)
    if features.table:  # the cells as training wrote them (maas.data.table_text)
        cells = np.empty((len(batch[features.columns[0]]), len(features.columns)), dtype=object)
        for j, column in enumerate(features.columns):
            values = batch[column]
            cells[:, j] = [category_text(v) for v in values.tolist()] if column in features.categorical \
                else np.asarray(values, np.float32).astype(str)
        return cells
    # column by column into a (features, rows) array, then one transposing copy: writing each
    # column into every row of a (rows, features) array strides through memory and costs ~3x as much
    # (32,768 rows x 64 columns: 18 ms against 5.7 ms)
    by_column = np.stack([np.asarray(batch[c], np.float32) for c in features.columns], axis=0)
    return np.ascontiguousarray(by_column.T).reshape(-1, *features.shape)


def scored_columns(batch: dict[str, np.ndarray], probabilities: np.ndarray, classes: list[Any],
                   version: int, keep: tuple[str, ...]) -> dict[str, np.ndarray]:
    out = {column: batch[column] for column in keep}
    out["prediction"] = np.asarray([str(c) for c in classes], dtype=object)[probabilities.argmax(axis=1)]
    for i, label in enumerate(classes):
        out[f"probability_{label}"] = probabilities[:, i].astype(np.float32)
    out["model_version"] = np.full(len(probabilities), version, dtype=np.int64)
    return out


class Scorer:
    """One Ray Data actor: the model loaded once, then batch after batch."""

    def __init__(self, root: str, name: str, version: int, features: Features, keep: tuple[str, ...]):
        from maas.artifacts.signing import Verifier
        from maas.serving.model import LoadedModel

        self.model = LoadedModel.from_registry(root, name, version, Verifier.from_setting(None))
        self.features, self.keep = features, keep

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        probabilities = self.model.predict(rows_to_input(batch, self.features))
        return scored_columns(batch, probabilities, self.model.schema.classes, self.model.version, self.keep)


def _arrow_dataset(path: str, fmt: str) -> Any:
    import pyarrow.dataset as pads

    from maas.storage import filesystem_for

    fs, inner = filesystem_for(path)
    try:
        return pads.dataset(inner, format=fmt, filesystem=fs)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read --input {path} as {fmt}: {exc}") from None


def check_input(path: str, fmt: str, schema: DataSchema, keep: tuple[str, ...]) -> tuple[Features, int]:
    """Columns, types and values against the model's schema, before anything runs; the row count."""
    dataset = _arrow_dataset(path, fmt)
    columns = {field.name: str(field.type) for field in dataset.schema}
    features = feature_columns(schema, columns, keep)
    bad = first_bad_row(dataset.to_batches(columns=list(features.columns)), features)
    if bad:
        rule = "must be finite (this model fills missing ones)" if features.missing_ok else \
            "must be present and finite"
        raise DataError(f"--input {path}: {bad}; every feature value {rule} (nothing was scored or "
                        "written)")
    return features, dataset.count_rows()


def score(root: str, ref: str, input_path: str, output_path: str, actors: int | None = None,
          batch_size: int | None = None, keep: tuple[str, ...] = (), fmt: str | None = None,
          address: str | None = None) -> ScoreSummary:
    import time

    from maas.optimize.source import parse_model_ref  # the one NAME[:VERSION|:LABEL] parser
    from maas.registry import Registry

    started = time.perf_counter()  # the input check counts: the user waits for it too
    entry = Registry(root).get(*parse_model_ref(ref))
    schema = DataSchema.from_dict(entry.metadata["schema"])
    fmt = input_format(input_path, fmt)
    features, rows = check_input(input_path, fmt, schema, keep)
    batch_size = batch_size or auto_batch_size(features)
    count, actors = _run(root, entry.name, entry.version, features, keep, input_path, output_path, fmt,
                         actors, batch_size, address)
    if count != rows:
        raise DataError(f"scored {count} rows but the input has {rows}")
    return ScoreSummary(entry.name, entry.version, count, time.perf_counter() - started, output_path,
                        actors)


def pool_size(requested: int | None, cpus: int) -> int:
    """Model-holding actors for a cluster of ``cpus`` CPUs: the requested count, or all CPUs but
    one. One CPU stays free for Ray Data's read and write tasks: with every CPU held by an actor
    they are never scheduled and the job waits forever (seen on a 2-CPU machine), so a request
    that leaves none is refused before anything starts. A 1-CPU cluster gets one actor that
    holds no CPU (``actor_cpus``)."""
    if requested is None:
        return max(1, cpus - 1)
    if requested < 1:
        raise ConfigError(f"--actors {requested}: expected at least 1")
    if cpus <= 1 and requested > 1:
        raise ConfigError(f"--actors {requested}: the cluster has {cpus} CPU, which runs one actor "
                          f"beside Ray Data's read and write tasks; use 1")
    if cpus > 1 and requested >= cpus:
        raise ConfigError(f"--actors {requested}: the cluster has {cpus} CPUs and Ray Data's read and "
                          f"write tasks need one that no actor holds (the job would wait forever); "
                          f"use at most {cpus - 1}")
    return requested


def actor_cpus(cpus: int) -> float:
    """CPUs each model-holding actor reserves: one, except on a 1-CPU cluster, where an actor that
    held it would leave Ray Data's read task unscheduled forever (seen: the job hung until
    killed); there the one actor reserves none and shares the CPU with the reads and writes."""
    return 1.0 if cpus > 1 else 0.0


def _run(root: str, name: str, version: int, features: Features, keep: tuple[str, ...], input_path: str,
         output_path: str, fmt: str, actors: int | None, batch_size: int,
         address: str | None) -> tuple[int, int]:
    import ray
    import ray.data

    from maas.raycluster import init_ray

    init_ray(address, logging_level="ERROR")
    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors = pool_size(actors, cpus)
    read = ray.data.read_parquet if fmt == "parquet" else ray.data.read_csv
    # at least a few blocks per actor, or one big file would feed a single actor
    scored = read(input_path, override_num_blocks=actors * 4).map_batches(
        Scorer, fn_constructor_args=(root, name, version, features, keep), batch_size=batch_size,
        batch_format="numpy", concurrency=actors, num_cpus=actor_cpus(cpus))
    if is_uri(output_path):  # object stores have no rename: checked input, then written in place
        scored.write_parquet(output_path)
        return ray.data.read_parquet(output_path).count(), actors
    final = Path(output_path).expanduser().resolve()
    if final.exists():
        raise ConfigError(f"--output {final} exists; choose a new path (nothing is overwritten)")
    staging = final.with_name(f".{final.name}.staging-{uuid.uuid4().hex[:8]}")
    try:
        scored.write_parquet(str(staging))
        count = ray.data.read_parquet(str(staging)).count()
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return count, actors
