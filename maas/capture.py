"""Captured traffic on storage: the Parquet layout that capture's compactor writes from what
serving spooled (``maas.serving.capture`` -> ``maas.capture_spool`` -> ``maas.capture_compactor``)
and the reader that turns it into a training set (``data.source: capture``).

Layout, under the registry's storage (a local path or any pyarrow filesystem URI), Hive-style so
that pyarrow, pandas, Spark or DuckDB read it as it is::

    <registry>/.maas/capture/model=<m>/version=<v>/hour=<YYYY-MM-DDTHH>/<written>-<writer>-<seq>.parquet
    <registry>/.maas/capture/model=<m>/_feedback/hour=<YYYY-MM-DDTHH>/<written>-<writer>-<seq>.parquet

One row per request row: ``request_id``, ``row`` (its index in the request), ``rows`` (the
request's rows), ``time`` (when the request arrived, UTC), ``protocol`` (v1/v2), ``route``
(``default``, ``traffic`` for a canary split, ``version/3``, ``label/stable``), ``latency_ms``
(inside the model host: validation, queue, batch and call), ``input`` (a fixed-shape float tensor
flattened to a list, its shape in ``input_shape``; the text for a text model; the cell texts for a
table model), ``output`` (the class probabilities answered), ``predicted`` (the class index) and
``predicted_class`` (its value as text). Model, version and hour are the partitions, so a reader
of ``model=<m>/`` gets them as columns (the ``_feedback`` folder is skipped by every Hive reader:
names starting with ``_`` are not data). Feedback rows: ``request_id``, ``label`` (one class per
request row, as text), ``time``. ``<written>`` (UTC, ``YYYYmmddTHHMMSSffffffZ``) is when the file
was written: a training job reads only files written before it first read its config, so every
worker reads the same rows. A local file appears whole (written under a hidden name, renamed).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

import numpy as np

from maas.errors import DataError
from maas.storage import filesystem_for, is_uri

CAPTURE_DIR = ".maas/capture"
FEEDBACK_DIR = "_feedback"
HOUR_FORMAT = "%Y-%m-%dT%H"
WRITTEN_FORMAT = "%Y%m%dT%H%M%S%fZ"
# Dictionary-encode the repetitive text columns only: trying it on every float of the inputs and
# outputs took most of a write's time. Min/max statistics only where a reader filters (time, ids,
# the answer): on the input and output lists they cost a tenth of a write and serve no query.
# zstd at level 1 over byte-stream-split floats (each float's bytes regrouped by position, which
# compresses where feature values repeat): a flush of 64,000 digits rows (1,000 requests of 64) is
# half the size of snappy's, 3.9 MB against 7.8 MB, in about the same time, 81-84 ms against 82-84
# ms (bench/capture_write.py). Most of a write is the list encoding itself: uncompressed, 68 ms.
# ``float_columns`` names the float lists it applies to.
WRITE_OPTIONS = {"use_dictionary": ["protocol", "route", "predicted_class", "label.list.element"],
                 "write_statistics": ["request_id", "row", "rows", "time", "protocol", "route",
                                      "latency_ms", "predicted", "predicted_class"],
                 "compression": "zstd", "compression_level": 1}
_FILE = re.compile(r"^(?P<written>\d{8}T\d{12}Z)-(?P<writer>.+)-(?P<seq>\d+)\.parquet$")


def capture_root(registry_root: str) -> str:
    return f"{registry_root.rstrip('/')}/{CAPTURE_DIR}"


def model_dir(registry_root: str, model: str) -> str:
    return f"{capture_root(registry_root)}/model={model}"


def hour_of(seconds: float) -> str:
    return datetime.fromtimestamp(seconds // 3600 * 3600, timezone.utc).strftime(HOUR_FORMAT)


def file_name(written: datetime, writer: str, seq: int) -> str:
    return f"{written.strftime(WRITTEN_FORMAT)}-{writer}-{seq:06d}.parquet"


# ---------------------------------------------------------------------------------------------
# Writing (called by the compactor; feedback by serving's writer, in a thread)


class Sample(NamedTuple):
    """One captured request as the request path leaves it: references, no copies (a tuple: the
    cheapest thing to make on the request path)."""

    time: float  # when it arrived, seconds since the epoch
    request_id: str | None
    model: Any  # maas.serving.model.LoadedModel: version and schema
    protocol: str
    route: str
    inputs: np.ndarray  # the batch the model was called with: [n, *input_shape], text or cells
    outputs: np.ndarray  # its answer, [n, classes] (or [n, 1] for one sigmoid)
    latency_s: float


def requests_table(samples: Sequence[Sample]) -> Any:
    """The Parquet table of one version's samples: one row per request row. A request's own values
    (id, time, protocol, route, latency) are made once per request and spread to its rows by
    Arrow (``take``), as is each row's class name: no Python object per row (a flush at 64 rows a
    request holds tens of thousands of rows)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    schema = samples[0].model.schema
    counts = np.array([len(s.inputs) for s in samples], dtype=np.int32)
    total = int(counts.sum())
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    request_of_row = pa.array(np.repeat(np.arange(len(samples), dtype=np.int32), counts))

    def per_request(values: list[Any], kind: Any) -> Any:
        return pc.take(pa.array(values, kind), request_of_row)

    outputs = np.concatenate([np.asarray(s.outputs, dtype=np.float32).reshape(len(s.outputs), -1)
                              for s in samples])
    if outputs.shape[1] > 1:
        predicted = outputs.argmax(axis=1)
    else:
        predicted = (outputs[:, 0] > 0.5).astype(np.int64)
    predicted = predicted.astype(np.int32)
    if len(schema.classes):
        names = pc.take(pa.array([str(c) for c in schema.classes], pa.string()),
                        pa.array(np.clip(predicted, 0, len(schema.classes) - 1)))
    else:
        names = pc.cast(pa.array(predicted), pa.string())
    columns: dict[str, Any] = {
        "request_id": per_request([s.request_id for s in samples], pa.string()),
        "row": pa.array(np.arange(total, dtype=np.int32) - starts.astype(np.int32), pa.int32()),
        "rows": pa.array(np.repeat(counts, counts), pa.int32()),
        "time": pa.array(np.repeat(np.array([int(s.time * 1e6) for s in samples], dtype=np.int64), counts),
                         pa.timestamp("us", tz="UTC")),
        "protocol": per_request([s.protocol for s in samples], pa.string()),
        "route": per_request([s.route for s in samples], pa.string()),
        "latency_ms": pa.array(np.repeat(np.array([s.latency_s * 1e3 for s in samples], dtype=np.float32),
                                         counts), pa.float32()),
    }
    columns.update(_input_columns(samples, schema, total))
    columns["output"] = _list_column(outputs, pa.float32())
    columns["predicted"] = pa.array(predicted, pa.int32())
    columns["predicted_class"] = names
    return pa.table(columns)


def _input_columns(samples: Sequence[Sample], schema: Any, total: int) -> dict[str, Any]:
    import pyarrow as pa

    if schema.is_text:
        texts = [as_text(v) for s in samples for v in np.asarray(s.inputs).reshape(-1)]
        return {"input": pa.array(texts, pa.string())}
    if schema.is_table:
        cells = np.concatenate([np.asarray(s.inputs, dtype=object).reshape(len(s.inputs), -1)
                                for s in samples])
        values = pa.array([as_text(v) for v in cells.reshape(-1)], pa.string())
        width = cells.shape[1]
        offsets = pa.array(np.arange(total + 1, dtype=np.int32) * width)
        return {"input": pa.ListArray.from_arrays(offsets, values)}
    x = np.concatenate([np.asarray(s.inputs, dtype=np.float32).reshape(len(s.inputs), -1)
                        for s in samples])
    shape = np.array([int(d) for d in schema.input_shape], dtype=np.int32)
    return {"input": _list_column(x, pa.float32()),
            "input_shape": _list_column(np.tile(shape, (total, 1)), pa.int32())}


def _list_column(matrix: np.ndarray, value_type: Any) -> Any:
    import pyarrow as pa

    rows, width = matrix.shape
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * width)
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(matrix).reshape(-1), value_type))


def as_text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def feedback_table(records: Sequence[tuple[float, str, Sequence[str]]]) -> Any:
    """(time, request id, labels as text: one per request row) -> the feedback Parquet table."""
    import pyarrow as pa

    return pa.table({
        "request_id": pa.array([r[1] for r in records], pa.string()),
        "label": pa.array([list(r[2]) for r in records], pa.list_(pa.string())),
        "time": pa.array([int(r[0] * 1e6) for r in records], pa.timestamp("us", tz="UTC")),
    })


def float_columns(table: Any) -> list[str]:
    """The Parquet paths of ``table``'s float values, plain or in a list (``input.list.element``):
    what byte-stream-split encoding applies to (it refuses text and lists of text)."""
    import pyarrow as pa

    paths = []
    for field in table.schema:
        kind, path = field.type, field.name
        if pa.types.is_list(kind):
            kind, path = kind.value_type, f"{path}.list.element"
        if pa.types.is_floating(kind):
            paths.append(path)
    return paths


def write_options(table: Any) -> dict[str, Any]:
    return {**WRITE_OPTIONS, "use_byte_stream_split": float_columns(table)}


def write_table(directory: str, name: str, table: Any) -> str:
    """Write ``table`` as ``directory/name``; a local file appears whole (a hidden name, renamed),
    an object store's is one PUT. Returns the path written."""
    import pyarrow.parquet as pq

    fs, inner = filesystem_for(directory)
    fs.create_dir(inner, recursive=True)
    final = f"{inner}/{name}"
    if is_uri(directory):
        pq.write_table(table, final, filesystem=fs, **write_options(table))
        return f"{directory}/{name}"
    hidden = f"{inner}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
    pq.write_table(table, hidden, **write_options(table))
    os.replace(hidden, final)
    return final


def write_samples(registry_root: str, model: str, samples: Iterable[Sample], writer: str,
                  next_seq: Any, written: datetime | None = None) -> list[tuple[str, int, int]]:
    """One file per (version, hour) of ``samples``; [(path, version, rows)]. ``next_seq()`` gives
    the writer's next file number."""
    groups: dict[tuple[int, int], list[Sample]] = {}
    for sample in samples:
        groups.setdefault((sample.model.version, int(sample.time // 3600)), []).append(sample)
    written = written or datetime.now(timezone.utc)
    files = []
    for (version, hours), group in sorted(groups.items()):
        table = requests_table(group)
        directory = f"{model_dir(registry_root, model)}/version={version}/hour={hour_of(hours * 3600)}"
        files.append((write_table(directory, file_name(written, writer, next_seq()), table), version,
                      table.num_rows))
    return files


def write_feedback(registry_root: str, model: str, records: Iterable[tuple[float, str, Sequence[str]]],
                   writer: str, next_seq: Any, written: datetime | None = None) -> list[str]:
    groups: dict[str, list[tuple[float, str, Sequence[str]]]] = {}
    for record in records:
        groups.setdefault(hour_of(record[0]), []).append(record)
    written = written or datetime.now(timezone.utc)
    return [write_table(f"{model_dir(registry_root, model)}/{FEEDBACK_DIR}/hour={hour}",
                        file_name(written, writer, next_seq()), feedback_table(group))
            for hour, group in sorted(groups.items())]


# ---------------------------------------------------------------------------------------------
# Time ranges (data.capture.since / until)

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(value: str | datetime, now: datetime, what: str) -> datetime:
    """An absolute UTC time from ISO text (a time without zone is UTC) or a span back from
    ``now`` (``30m``, ``12h``, ``7d``, ``2w``)."""
    if isinstance(value, datetime):
        moment = value
    else:
        relative = _RELATIVE.match(str(value))
        if relative:
            return now - timedelta(seconds=float(relative.group(1)) * _UNITS[relative.group(2)])
        try:
            moment = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{what} {value!r} is neither an ISO time (2026-12-01, "
                             f"2026-12-01T08:00:00Z) nor a span back from now (30m, 12h, 7d, 2w)") from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class CapturedFile:
    path: str
    version: int | None  # None: a feedback file
    hour: datetime
    written: datetime


def _partition(path: str, key: str) -> str | None:
    for part in path.split("/"):
        if part.startswith(f"{key}="):
            return part[len(key) + 1:]
    return None


def list_files(registry_root: str, model: str, feedback: bool = False) -> list[CapturedFile]:
    """The capture (or feedback) files of ``model``, sorted by path; hidden and unfinished files
    left out."""
    import pyarrow.fs as pafs

    base = model_dir(registry_root, model) + (f"/{FEEDBACK_DIR}" if feedback else "")
    fs, inner = filesystem_for(base)
    if fs.get_file_info(inner).type == pafs.FileType.NotFound:
        return []
    found = []
    for info in fs.get_file_info(pafs.FileSelector(inner, recursive=True)):
        relative = info.path[len(inner.rstrip("/")) + 1:]
        name = relative.rsplit("/", 1)[-1]
        match = _FILE.match(name)
        if info.type != pafs.FileType.File or match is None:
            continue
        if not feedback and relative.split("/", 1)[0] == FEEDBACK_DIR:
            continue
        version, hour = _partition(relative, "version"), _partition(relative, "hour")
        if hour is None or (not feedback and (version is None or not version.isdigit())):
            continue
        try:
            hour_start = datetime.strptime(hour, HOUR_FORMAT).replace(tzinfo=timezone.utc)
            written = datetime.strptime(match.group("written"), WRITTEN_FORMAT).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
        found.append(CapturedFile(info.path, None if feedback else int(version), hour_start, written))
    return sorted(found, key=lambda f: f.path)


def _read(registry_root: str, files: list[CapturedFile]) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, _ = filesystem_for(capture_root(registry_root))
    tables = []
    for file in files:
        table = pq.read_table(file.path, filesystem=fs)
        if file.version is not None:
            table = table.append_column("version", pa.array(np.full(table.num_rows, file.version, np.int32)))
        tables.append(table)
    return tables


@dataclass
class Captured:
    """Captured rows of one model in a time range, with their feedback labels joined."""

    inputs: np.ndarray | list[Any]  # float rows flattened [n, values]; texts; or lists of cell texts
    labels: list[str | None]  # the joined feedback label (text), None without one
    predicted: np.ndarray  # the class index answered
    versions: np.ndarray
    times: np.ndarray  # datetime64[us]
    request_ids: list[str | None]
    files: int
    feedback_records: int
    outputs: np.ndarray | list[Any] | None = None  # the probabilities answered, [n, classes]
    protocols: list[str] | None = None
    mismatched: int = 0  # requests whose feedback gave another number of labels than rows


def read_captured(registry_root: str, model: str, since: datetime, until: datetime,
                  as_of: datetime | None = None, version: int | None = None) -> Captured:
    """Rows captured for ``model`` with ``since <= time < until`` (and ``version``), from files
    written up to ``as_of`` (a training job's driver and workers then read the same rows however
    much traffic arrives in between); each row's label from the newest feedback for its request
    id written up to ``as_of`` (one label per request row)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    as_of = as_of or datetime.now(timezone.utc)
    files = [f for f in list_files(registry_root, model)
             if f.hour + timedelta(hours=1) > since and f.hour < until and f.written <= as_of
             and (version is None or f.version == version)]
    empty = Captured([], [], np.zeros(0, np.int64), np.zeros(0, np.int32),
                     np.zeros(0, "datetime64[us]"), [], len(files), 0)
    if not files:
        return empty
    tables = [t for t in _read(registry_root, files) if t.num_rows]
    if not tables:
        return empty
    table = pa.concat_tables(tables, promote_options="default")
    low = pa.scalar(int(since.timestamp() * 1e6), pa.timestamp("us", tz="UTC"))
    high = pa.scalar(int(until.timestamp() * 1e6), pa.timestamp("us", tz="UTC"))
    table = table.filter(pc.and_(pc.greater_equal(table["time"], low), pc.less(table["time"], high)))
    if not table.num_rows:
        return empty
    table = table.sort_by([("time", "ascending"), ("request_id", "ascending"), ("row", "ascending")])
    feedback, records = _feedback_labels(registry_root, model, since, as_of)
    request_ids = table["request_id"].to_pylist()
    rows, counts = table["row"].to_pylist(), table["rows"].to_pylist()
    labels, mismatched = [], set()
    for request_id, row, count in zip(request_ids, rows, counts, strict=True):
        given = feedback.get(request_id) if request_id is not None else None
        if given is not None and len(given) != count:
            mismatched.add(request_id)
            given = None
        labels.append(given[row] if given is not None else None)
    return Captured(_inputs(table["input"]), labels,
                    table["predicted"].to_numpy(zero_copy_only=False).astype(np.int64),
                    table["version"].to_numpy(zero_copy_only=False),
                    table["time"].to_numpy(zero_copy_only=False), request_ids, len(files), records,
                    _inputs(table["output"]), table["protocol"].to_pylist(), len(mismatched))


def _inputs(column: Any) -> np.ndarray | list[Any]:
    """The ``input`` column: float lists as one [rows, values] array when every row holds as many
    (else a list of arrays, refused by the reader with the shapes found); texts and cell lists as
    Python lists."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = column.combine_chunks()
    if not pa.types.is_list(column.type) or not pa.types.is_floating(column.type.value_type):
        return column.to_pylist()
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if len(set(lengths.tolist())) == 1:
        return values.reshape(len(column), -1)
    return list(np.split(values, np.cumsum(lengths)[:-1]))


def _feedback_labels(registry_root: str, model: str, since: datetime,
                     as_of: datetime) -> tuple[dict[str, list[str]], int]:
    """Request id -> its labels, the newest feedback winning; and how many records were read.
    Feedback comes after its request: files of hours from an hour before ``since`` (clocks of
    two machines differ) to ``as_of``."""
    files = [f for f in list_files(registry_root, model, feedback=True)
             if f.hour >= since - timedelta(hours=2) and f.written <= as_of]
    labels: dict[str, tuple[Any, list[str]]] = {}
    count = 0
    for table in _read(registry_root, files):
        count += table.num_rows
        for request_id, label, moment in zip(table["request_id"].to_pylist(), table["label"].to_pylist(),
                                             table["time"].to_pylist(), strict=True):
            if request_id is None or label is None:
                continue
            known = labels.get(request_id)
            if known is None or moment >= known[0]:
                labels[request_id] = (moment, label)
    return {request_id: label for request_id, (_, label) in labels.items()}, count


def load_captured(cfg: Any) -> Any:
    """``data.source: capture``: the captured rows of ``data.capture.model`` in the range, labelled
    by their feedback, as ``Splits``; the schema (input shape, classes) from the captured model's
    registered metadata. Rows without a label are dropped (``require_label``, counted) or take
    the answered class."""
    from maas.data import (
        DataSchema,
        Splits,
        apply_missing,
        encode_labels,
        fingerprint,
        fit_preprocessing,
        split_indices,
        table_text,
    )
    from maas.registry import Registry

    source = cfg.capture
    root = source.registry
    if root is None:
        from maas.config import default_registry_root

        root = default_registry_root()
    since, until = parse_time(source.since, _utcnow(), "since"), parse_time(source.until, _utcnow(), "until")
    as_of = parse_time(source.as_of, _utcnow(), "as_of") if source.as_of else None
    where = (f"model '{source.model}'" + (f" version {source.version}" if source.version else "")
             + f" between {iso(since)} and {iso(until)} under {model_dir(root, source.model)}")
    captured = read_captured(root, source.model, since, until, as_of, source.version)
    if not len(captured.inputs):
        raise DataError(f"nothing was captured for {where} ({captured.files} capture files in that "
                        f"range): turn capture on in the model's serving settings (capture: {{rate: "
                        f"0.1}}), or widen data.capture.since / until")
    registry = Registry(root)
    schema_version = source.version or int(captured.versions.max())
    try:
        metadata = registry.get(source.model, schema_version).metadata
    except Exception as exc:
        raise DataError(f"captured rows of {where} came from version {schema_version}, whose registered "
                        f"metadata (input shape, classes) cannot be read: {exc}") from None
    served = DataSchema.from_dict(metadata["schema"])
    classes = list(served.classes)
    total = len(captured.inputs)
    labelled = np.array([label is not None for label in captured.labels])
    if captured.mismatched:
        print(f"[data] capture: {captured.mismatched} requests had feedback with another number of "
              f"labels than the request had rows (one label per row is needed); not joined", flush=True)
    if source.require_label:
        keep = np.flatnonzero(labelled)
        print(f"[data] capture: {total} rows of {where}, {len(keep)} with a feedback label; "
              f"dropped {total - len(keep)} without one (data.capture.require_label)", flush=True)
        if not len(keep):
            raise DataError(f"none of the {total} rows captured for {where} has a feedback label "
                            f"({captured.feedback_records} feedback records read): send labels to "
                            f"POST /v1/models/{source.model}/feedback with each answer's X-Request-ID, "
                            f"or set data.capture.require_label: false to train on the answered classes")
        raw = [captured.labels[i] for i in keep]
    else:
        keep = np.arange(total)
        names = [str(c) for c in classes]
        raw = [captured.labels[i] if labelled[i] else names[int(p)] if 0 <= p < len(names) else str(p)
               for i, p in enumerate(captured.predicted)]
        print(f"[data] capture: {total} rows of {where}, {int(labelled.sum())} with a feedback label, "
              f"{total - int(labelled.sum())} labelled with the class the model answered "
              f"(data.capture.require_label: false)", flush=True)
    known = {str(c) for c in classes}
    valid = [i for i, label in enumerate(raw) if label in known]
    if len(valid) < len(raw):
        strange = sorted({label for label in raw if label not in known})[:10]
        print(f"[data] capture: dropped {len(raw) - len(valid)} rows whose label {strange} is not a "
              f"class of {source.model} version {schema_version} ({classes})", flush=True)
        keep, raw = keep[valid], [raw[i] for i in valid]
        if not len(keep):
            raise DataError(f"no row captured for {where} has a label among the classes {classes}")
    inputs = captured.inputs[keep] if isinstance(captured.inputs, np.ndarray) else \
        [captured.inputs[i] for i in keep]
    features = _features(inputs, served, where)
    features, raw_labels, dropped = apply_missing(features, np.array(raw, dtype=object), cfg,
                                                  f"the rows captured for {where}")
    y, classes = encode_labels(np.asarray(raw_labels), classes)
    train, val, test = split_indices(y, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    table = features.categories is not None
    preprocessing = fit_preprocessing(features.take(train), _preprocessing_config(cfg, served, table),
                                      dropped)
    x = table_text(features) if table else features.values
    versions = sorted({int(v) for v in captured.versions[keep]})
    schema = DataSchema(
        input_shape=tuple(served.input_shape), classes=classes, dtype=served.dtype,
        feature_names=served.feature_names,
        source=(f"capture:{source.model}" + (f"@{source.version}" if source.version else "")
                + f" {iso(since)}..{iso(until)} (versions {versions}, {len(keep)} rows)"),
        preprocessing=preprocessing)
    return Splits(x[train], y[train], x[val], y[val], x[test], y[test], schema, fingerprint(x, y))


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _features(inputs: list[Any], schema: Any, where: str) -> Any:
    """Captured inputs as ``Features`` in the served model's input shape."""
    from maas.data import Features

    if schema.is_text:
        return Features(np.array([str(v) for v in inputs], dtype=object))
    if schema.is_table:
        names = list(schema.feature_names or [])
        cells = np.array(inputs, dtype=object)
        if cells.ndim != 2 or cells.shape[1] != len(names):
            raise DataError(f"rows captured for {where} hold {cells.shape[1:] if cells.ndim else '?'} "
                            f"cells, but the model's columns are {names}: set data.capture.version")
        categorical = schema.categorical
        numeric = [i for i, n in enumerate(names) if n not in categorical]
        kinds = ["categorical" if n in categorical else "numeric" for n in names]
        values = cells[:, numeric].astype(np.float32) if numeric else np.zeros((len(cells), 0), np.float32)
        categories = cells[:, [i for i, n in enumerate(names) if n in categorical]]
        return Features(values, names, categories, kinds)
    shape = tuple(int(d) for d in schema.input_shape)
    width = int(np.prod(shape)) if shape else 1
    lengths = {inputs.shape[1]} if isinstance(inputs, np.ndarray) else {len(v) for v in inputs}
    if lengths != {width}:
        raise DataError(f"rows captured for {where} hold {sorted(lengths)} values each, but the "
                        f"schema's input shape {list(shape)} needs {width}: versions with another "
                        f"input shape were captured in that range; set data.capture.version")
    return Features(np.asarray(inputs, dtype=np.float32).reshape(len(inputs), *shape))


def _preprocessing_config(cfg: Any, schema: Any, table: bool) -> Any:
    """The settings ``fit_preprocessing`` reads: the job's, and for a table the captured model's
    categorical columns (the job cannot name them: its source is not a file)."""
    if not table:
        return cfg
    from types import SimpleNamespace

    return SimpleNamespace(missing=cfg.missing, max_categories=cfg.max_categories,
                           categorical_encoding=(schema.preprocessing or {}).get("encoding",
                                                                                  cfg.categorical_encoding),
                           categorical_embedding_dim=(schema.preprocessing or {}).get(
                               "embedding_dim", cfg.categorical_embedding_dim))
