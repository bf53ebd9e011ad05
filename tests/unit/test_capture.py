"""Captured traffic for retraining (issue 16 item 4), without Ray: the bounded buffer that drops
and counts, seeded sampling, a flush's Parquet files (partitions, columns, inputs and outputs
intact), feedback joined by request id, and ``data.source: capture`` (range, labels, errors)."""

from __future__ import annotations

import asyncio
import inspect
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as pads
import pytest

from maas.capture import (
    Sample,
    file_name,
    float_columns,
    hour_of,
    iso,
    list_files,
    model_dir,
    read_captured,
    write_feedback,
    write_samples,
)
from maas.capture_spool import write_spool
from maas.config import DataConfig, TrainJobConfig, load_config
from maas.data import DataSchema, load_dataset
from maas.errors import ConfigError, DataError
from maas.registry import Registry
from maas.serving.canary import Caller
from maas.serving.capture import Capture
from maas.serving.model import LoadedModel
from maas.serving.settings import CaptureSettings
from tests.conftest import REPO
from tests.unit.test_canary import ROLLOUT, CanaryHost, Clock, Store
from tests.unit.test_serve_hosting import FakeRegistryHost

MODEL = "m"
INLINE = {"compaction": "inline"}  # Parquet written in the writer's thread: no compactor process


def inline(**settings: Any) -> CaptureSettings:
    return CaptureSettings(**INLINE, **settings)


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def fake_model(version: int = 1, schema: DataSchema | None = None) -> LoadedModel:
    return LoadedModel(MODEL, version, schema or DataSchema(input_shape=(2,), classes=["a", "b"]), None, {})


class Seq:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> int:
        self.n += 1
        return self.n


# --- the buffer and the sampling ----------------------------------------------------------------

def test_the_buffer_drops_and_counts_when_full_and_never_blocks() -> None:
    capture = Capture(MODEL, "/nowhere", inline(rate=1.0, max_buffered_rows=5), "r")
    assert not inspect.iscoroutinefunction(capture.offer)  # the request path never awaits
    model, out = fake_model(), np.zeros((1, 2), np.float32)
    for i in range(3):
        capture.offer(f"r{i}", model, "v1", "default", np.zeros((1, 2), np.float32), out, 0.001)
    capture.offer("big", model, "v1", "default", np.zeros((3, 2), np.float32), np.zeros((3, 2)), 0.001)
    for i in range(3, 10):
        capture.offer(f"r{i}", model, "v1", "default", np.zeros((1, 2), np.float32), out, 0.001)
    assert capture.buffered_rows == 5 and len(capture.buffer) == 5
    assert [s.request_id for s in capture.buffer] == ["r0", "r1", "r2", "r3", "r4"]
    assert (capture.dropped, capture.dropped_rows) == (6, 3 + 5)
    state = capture.state()
    assert state["dropped_requests"] == 6 and state["buffered_rows"] == 5 and state["rate"] == 1.0
    for i in range(100):  # feedback is bounded the same way
        capture.record_feedback(f"f{i}", ["a"])
    assert len(capture.feedback) == 5 and capture.feedback_dropped == 95


def test_the_sampling_rate_is_honoured() -> None:
    rng = random.Random(7)
    capture = Capture(MODEL, "/nowhere", inline(rate=0.1, max_buffered_rows=10**6), "r",
                      rng=rng.random)
    model, row = fake_model(), np.zeros((1, 2), np.float32)
    for i in range(20_000):
        capture.offer(str(i), model, "v1", "default", row, row, 0.0)
    assert 0.09 < len(capture.buffer) / 20_000 < 0.11
    again = Capture(MODEL, "/nowhere", inline(rate=0.1, max_buffered_rows=10**6), "r",
                    rng=random.Random(7).random)
    for i in range(20_000):
        again.offer(str(i), model, "v1", "default", row, row, 0.0)
    assert [s.request_id for s in again.buffer] == [s.request_id for s in capture.buffer]  # seeded


def test_models_without_capture_keep_the_plain_path() -> None:
    async def scenario() -> None:
        host = FakeRegistryHost([1])
        await host.configure({"capture": {**INLINE, "rate": 0}})
        assert host.capture is None and not host.routes_callers
        assert "capture" not in await host.status()

    run(scenario())


# --- a flush ------------------------------------------------------------------------------------

def _read_dataset(root: Path) -> Any:
    return pads.dataset(model_dir(str(root), MODEL), partitioning="hive").to_table()


def test_a_flush_writes_parquet_partitioned_with_inputs_and_outputs_intact(tmp_path: Path) -> None:
    async def scenario() -> None:
        host = FakeRegistryHost([1, 2])
        host.registry_root = str(tmp_path)
        await host.configure({"versions": {"latest": 2}, "capture": {**INLINE, "rate": 1.0, "flush_s": 60}})
        assert host.routes_callers  # the request id travels with each request
        sent, answered = {}, {}
        for i in range(5):
            rows = np.round(np.random.default_rng(i).random((i % 3 + 1, 2)), 3).tolist()
            result = await host.infer(rows, "v1", caller=Caller(request_id=f"v1-{i}"))
            sent[f"v1-{i}"], answered[f"v1-{i}"] = rows, result["outputs"]
        v2 = {"inputs": [{"name": "inputs", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
        result = await host.infer(v2, "v2", caller=Caller(request_id="v2-0"))
        sent["v2-0"], answered["v2-0"] = [[1, 2], [3, 4]], result["outputs"]
        await host.infer([[5.0, 6.0]], "v1", version="1", caller=Caller(request_id="pinned"))
        sent["pinned"] = [[5.0, 6.0]]
        assert host.capture.buffered_rows == sum(len(r) for r in sent.values())
        await host.capture.flush()
        status = (await host.status())["capture"]
        assert status["written_rows"] == sum(len(r) for r in sent.values()) and status["buffered_rows"] == 0
        assert status["written_files"] in (2, 3, 4)  # one per version and hour

        table = _read_dataset(tmp_path).sort_by([("request_id", "ascending"), ("row", "ascending")])
        rows = table.to_pylist()
        assert len(rows) == sum(len(r) for r in sent.values())
        now = datetime.now(timezone.utc).timestamp()
        hours = {hour_of(now - 60), hour_of(now)}  # the requests were answered within the minute
        assert {r["hour"] for r in rows} <= hours
        for request_id, inputs in sent.items():
            mine = [r for r in rows if r["request_id"] == request_id]
            assert [r["row"] for r in mine] == list(range(len(inputs)))
            assert all(r["rows"] == len(inputs) for r in mine)
            assert np.allclose([r["input"] for r in mine], np.asarray(inputs, np.float32))
            assert all(r["input_shape"] == [2] for r in mine)
            if request_id in answered:
                assert np.array_equal(np.asarray([r["output"] for r in mine], np.float32),
                                      np.asarray(answered[request_id], np.float32))
        by_id = {r["request_id"]: r for r in rows}
        assert by_id["v2-0"]["protocol"] == "v2" and by_id["v1-0"]["protocol"] == "v1"
        assert by_id["v1-0"]["version"] == 2 and by_id["pinned"]["version"] == 1
        assert by_id["v1-0"]["route"] == "default" and by_id["pinned"]["route"] == "version/1"
        assert by_id["v1-0"]["predicted"] == 0 and by_id["v1-0"]["predicted_class"] == "a"
        assert by_id["v1-0"]["latency_ms"] >= 0 and by_id["v1-0"]["time"].tzinfo is not None
        paths = [Path(f.path) for f in list_files(str(tmp_path), MODEL)]
        assert {p.parent.parent.name for p in paths} == {"version=1", "version=2"}
        assert all(p.parent.name[len("hour="):] in hours and p.parents[2].name == f"model={MODEL}"
                   for p in paths)
        assert not any(p.name.startswith(".") for p in tmp_path.rglob("*.parquet"))  # no leftovers

        # off: what is left is written first, and the plain path comes back
        await host.infer([[0.5, 0.5]], caller=Caller(request_id="last"))
        await host.configure({"versions": {"latest": 2}})
        assert host.capture is None and not host.routes_callers
        assert "last" in _read_dataset(tmp_path)["request_id"].to_pylist()

    run(scenario())


def test_the_writer_flushes_on_its_own_after_flush_rows(tmp_path: Path) -> None:
    async def scenario() -> None:
        host = FakeRegistryHost([1])
        host.registry_root = str(tmp_path)
        await host.configure({"capture": {**INLINE, "rate": 1.0, "flush_s": 3600, "flush_rows": 4}})
        for i in range(4):
            await host.infer([[float(i), 0.0]], caller=Caller(request_id=str(i)))
        for _ in range(200):  # the background task writes in a thread
            if host.capture.written_rows == 4:
                break
            await asyncio.sleep(0.01)
        assert host.capture.written_rows == 4
        host.close_capture()  # a replica shutting down: nothing held, nothing lost

    run(scenario())


def test_a_failed_write_is_kept_for_the_next_flush(tmp_path: Path) -> None:
    failures = [OSError("No space left on device")]

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return write_spool(*args, **kwargs)

    async def scenario() -> None:
        capture = Capture(MODEL, str(tmp_path), inline(rate=1.0), "r", write_spool=flaky)
        row = np.ones((1, 2), np.float32)
        capture.offer("x", fake_model(), "v1", "default", row, row, 0.0)
        await capture.flush()
        assert capture.write_errors == 1 and "No space left" in capture.last_error
        assert capture.buffered_rows == 1 and capture.written_rows == 0
        await capture.flush()
        assert capture.written_rows == 1 and capture.buffered_rows == 0 and capture.dropped == 0

    run(scenario())


# --- feedback -----------------------------------------------------------------------------------

def test_feedback_is_recorded_for_any_request_and_joined_by_request_id(tmp_path: Path) -> None:
    async def scenario() -> None:
        host = FakeRegistryHost([1])
        host.registry_root = str(tmp_path)
        await host.configure({"capture": {**INLINE, "rate": 1.0, "flush_s": 60}})
        await host.infer([[0.0, 1.0]], caller=Caller(request_id="one"))
        await host.infer([[0.0, 1.0], [1.0, 0.0]], caller=Caller(request_id="two"))
        await host.infer([[2.0, 2.0]], caller=Caller(request_id="none"))
        reply = await host.feedback("one", "b")
        assert reply["captured"] and reply["labels"] == ["b"] and reply["counted"] is False
        assert (await host.feedback("two", [1, "a"]))["labels"] == ["b", "a"]  # an index or a value
        assert (await host.feedback("one", "a"))["captured"]  # sent again: the newer one wins
        bad = await host.feedback("one", "zebra")
        assert bad["status"] == 400 and "'zebra' is not a class" in bad["error"]
        assert (await host.feedback("", "a"))["status"] == 400
        await host.infer([[3.0, 3.0], [4.0, 4.0]], caller=Caller(request_id="three"))
        assert (await host.feedback("three", "a"))["captured"]  # one label for two rows: not joined
        await host.capture.flush()
        captured = read_captured(str(tmp_path), MODEL, datetime.now(timezone.utc) - timedelta(hours=1),
                                 datetime.now(timezone.utc) + timedelta(minutes=1))
        assert sorted(zip(captured.request_ids, captured.labels, strict=True), key=str) == sorted(
            [("one", "a"), ("two", "b"), ("two", "a"), ("none", None), ("three", None), ("three", None)],
            key=str)
        assert captured.feedback_records == 4 and captured.mismatched == 1
        feedback_files = list_files(str(tmp_path), MODEL, feedback=True)
        assert len(feedback_files) == 1 and "/_feedback/hour=" in feedback_files[0].path

    run(scenario())


def test_canary_feedback_is_still_scored_and_also_captured(tmp_path: Path) -> None:
    async def scenario() -> None:
        host = CanaryHost([1, 2], Store(), Clock())
        host.registry_root = str(tmp_path)
        await host.configure({**ROLLOUT, "capture": {**INLINE, "rate": 1.0}, "rollout": {
            **ROLLOUT["rollout"], "max_accuracy_drop": 0.1}})
        await host.infer([[0.0, 0.0]], caller=Caller(request_id="r1"))
        reply = await host.feedback("r1", "a")
        assert reply["correct"] == 1 and reply["counted"] and reply["captured"]
        assert len(host.capture.feedback) == 1
        plain = FakeRegistryHost([1])
        await plain.configure({})
        assert (await plain.feedback("r1", "a"))["status"] == 404  # no split, no capture: unknown

    run(scenario())


# --- data.source: capture -----------------------------------------------------------------------

DIGITS = DataSchema(input_shape=(8, 8), classes=list(range(10)), source="sklearn:digits")


def _publish(root: Path, schema: DataSchema = DIGITS, name: str = "digits_mlp") -> int:
    files = root.parent / f"files-{name}"
    files.mkdir(exist_ok=True)
    (files / "model.keras").write_bytes(b"not read here")
    return Registry(str(root)).publish(name, files, {"schema": schema.to_dict()}).version


def _capture_digits(root: Path, name: str, when: datetime, count: int, start: int = 0,
                    labelled: int | None = None, version: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``count`` digits captured at ``when`` (one per request), the first ``labelled`` with their
    true label as feedback."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = digits.images[start:start + count].astype(np.float32), digits.target[start:start + count]
    model = LoadedModel(name, version, DIGITS, None, {})
    samples = [Sample(when.timestamp() + i * 1e-3, f"{when:%d%H}-{start + i}", model, "v1", "default",
                      x[i:i + 1], np.eye(10, dtype=np.float32)[[(y[i] + 1) % 10]], 0.002)
               for i in range(count)]
    write_samples(str(root), name, samples, "w", Seq())
    records = [(when.timestamp() + 60, s.request_id, [str(int(y[i]))])
               for i, s in enumerate(samples[:count if labelled is None else labelled])]
    if records:
        write_feedback(str(root), name, records, "w", Seq())
    return x, y


def _capture_config(root: Path, **capture: Any) -> DataConfig:
    return TrainJobConfig.model_validate({
        "data": {"source": "capture", "capture": {"model": "digits_mlp", "since": "7d", **capture}},
        "registry": {"root": str(root)}}).data


def test_capture_source_loads_rows_and_labels_in_the_range(tmp_path: Path, capsys) -> None:
    root = tmp_path / "registry"
    _publish(root)
    now = datetime.now(timezone.utc)
    x, y = _capture_digits(root, "digits_mlp", now - timedelta(days=2), 200, labelled=150)
    _capture_digits(root, "digits_mlp", now - timedelta(days=10), 100, start=200, labelled=50)  # before
    splits = load_dataset(_capture_config(root))
    assert sum(splits.sizes().values()) == 150
    out = capsys.readouterr().out
    assert "200 rows" in out and "150 with a feedback label" in out and "dropped 50 without one" in out
    assert splits.schema.input_shape == (8, 8) and splits.schema.classes == list(range(10))
    assert splits.schema.source.startswith("capture:digits_mlp ")
    # each row carries its own label (the feedback), not the class the model answered
    rows = np.concatenate([splits.x_train, splits.x_val, splits.x_test])
    labels = np.concatenate([splits.y_train, splits.y_val, splits.y_test])
    truth = {x[i].tobytes(): int(y[i]) for i in range(150)}
    assert all(truth[row.tobytes()] == label for row, label in zip(rows, labels, strict=True))

    wider = load_dataset(_capture_config(root, since="14d", require_label=False))
    assert sum(wider.sizes().values()) == 300  # every row; the unlabelled ones take the answer
    assert "200 with a feedback label, 100 labelled with the class the model answered" in \
        capsys.readouterr().out


def test_capture_source_errors_clearly(tmp_path: Path, capsys) -> None:
    from train.cli import main as train_main

    root = tmp_path / "registry"
    _publish(root)
    now = datetime.now(timezone.utc)
    _capture_digits(root, "digits_mlp", now - timedelta(days=10), 40, labelled=0)
    with pytest.raises(DataError, match="nothing was captured for model 'digits_mlp'"):
        load_dataset(_capture_config(root, since="1d"))
    with pytest.raises(DataError, match="none of the 40 rows captured .* has a feedback label"):
        load_dataset(_capture_config(root, since="14d"))
    code = train_main(["--config", str(REPO / "configs/train/digits_from_capture.yaml"),
                       "--set", f"registry.root={root}", "--check"])
    assert code == 2 and "nothing was captured for model 'digits_mlp'" in capsys.readouterr().err
    code = train_main(["--config", str(REPO / "configs/train/digits_from_capture.yaml"),
                       "--set", f"registry.root={root}", "--set", "data.capture.since=30d", "--check"])
    err = capsys.readouterr().err
    assert code == 2 and "has a feedback label" in err and "require_label: false" in err


def test_a_training_job_from_capture_checks_out_at_the_splits_level(tmp_path: Path, capsys) -> None:
    from maas.training import check_job

    root = tmp_path / "registry"
    _publish(root)
    now = datetime.now(timezone.utc)
    _capture_digits(root, "digits_mlp", now - timedelta(hours=30), 600)
    cfg = load_config(REPO / "configs/train/digits_from_capture.yaml", [f"registry.root={root}"])
    assert cfg.data.capture.registry == str(root)  # the job's registry unless it says otherwise
    splits = load_dataset(cfg.data)
    check_job(cfg, splits)  # the model fits the data, enough rows for 2 workers x batch 32
    assert splits.sizes() == {"train": 420, "val": 90, "test": 90}
    assert splits.x_train.dtype == np.float32 and splits.x_train.shape[1:] == (8, 8)
    # what travels to the workers reads the very same rows
    again = load_dataset(TrainJobConfig.model_validate(cfg.model_dump(mode="json")).data)
    assert again.fingerprint == splits.fingerprint


def test_files_written_after_the_config_was_read_are_not_read(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    _publish(root)
    now = datetime.now(timezone.utc)
    _capture_digits(root, "digits_mlp", now - timedelta(hours=1), 100)
    cfg = _capture_config(root, since="1d")
    before = load_dataset(cfg)
    # a worker reading later, after more traffic arrived: the same rows
    later = datetime.now(timezone.utc) + timedelta(seconds=5)
    samples = [Sample(now.timestamp() - 10, "late", LoadedModel("digits_mlp", 1, DIGITS, None, {}), "v1",
                      "default", np.zeros((1, 8, 8), np.float32), np.eye(10, dtype=np.float32)[[0]], 0.0)]
    write_samples(str(root), "digits_mlp", samples, "w", Seq(), written=later)
    write_feedback(str(root), "digits_mlp", [(now.timestamp(), "late", ["0"])], "w", Seq(), written=later)
    assert load_dataset(cfg).fingerprint == before.fingerprint
    assert _rows(_capture_config(root, since="1d", as_of=iso(later + timedelta(seconds=1)))) == 101


def _rows(cfg: DataConfig) -> int:
    return sum(load_dataset(cfg).sizes().values())


def test_capture_config_pins_the_range_and_refuses_what_does_not_apply() -> None:
    cfg = _capture_config(Path("/r"), since="2026-12-01", until="2026-12-02T06:00:00+02:00")
    assert (cfg.capture.since, cfg.capture.until) == ("2026-12-01T00:00:00.000000Z",
                                                       "2026-12-02T04:00:00.000000Z")
    relative = _capture_config(Path("/r"), since="12h").capture
    span = datetime.fromisoformat(relative.until) - datetime.fromisoformat(relative.since)
    assert span == timedelta(hours=12) and relative.until == relative.as_of
    for capture, message in [({"since": "yesterday"}, "neither an ISO time"),
                             ({"since": "1d", "until": "2d"}, "must be before until"),
                             ({"since": "1d", "model": "../x"}, "model")]:
        with pytest.raises(ConfigError, match=message):
            load_config(REPO / "configs/train/digits_from_capture.yaml",
                        [f"data.capture.{k}={v}" for k, v in capture.items()])
    with pytest.raises(ConfigError, match="does not apply to data.source: capture"):
        load_config(REPO / "configs/train/digits_from_capture.yaml", ["data.classes=[0, 1]"])
    with pytest.raises(ConfigError, match="needs data.capture"):
        load_config(REPO / "configs/train/digits_mlp.yaml", ["data.source=capture"])


def test_text_and_table_models_are_captured_as_strings(tmp_path: Path) -> None:
    text = DataSchema(input_shape=(), classes=["negative", "positive"], dtype="string")
    table = DataSchema(input_shape=(2,), classes=[0, 1], dtype="table", feature_names=["age", "city"],
                       preprocessing={"missing": "refuse", "categorical": {"city": ["x", "y"]},
                                      "numeric_columns": ["age"]})
    samples = [Sample(1e9, "t", LoadedModel("t", 1, text, None, {}), "v1", "default",
                      np.array(["so good", "bad"]), np.array([[0.1, 0.9], [0.8, 0.2]], np.float32), 0.0)]
    write_samples(str(tmp_path), "t", samples, "w", Seq())
    cells = np.array([["41.0", "x"], ["nan", "y"]], dtype=object)
    write_samples(str(tmp_path), "tab", [Sample(1e9, "c", LoadedModel("tab", 1, table, None, {}), "v2",
                                                "default", cells, np.array([[0.3, 0.7], [0.6, 0.4]]), 0.0)],
                  "w", Seq())
    since, until = datetime(2001, 9, 9, tzinfo=timezone.utc), datetime(2001, 9, 10, tzinfo=timezone.utc)
    got = read_captured(str(tmp_path), "t", since, until)
    assert got.inputs == ["so good", "bad"] and got.predicted.tolist() == [1, 0]
    got = read_captured(str(tmp_path), "tab", since, until)
    assert got.inputs == [["41.0", "x"], ["nan", "y"]]


def test_float_values_are_byte_stream_split_and_zstd_compressed_text_is_not(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    image = DataSchema(input_shape=(2,), classes=["a", "b"])
    inputs, outputs = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32), np.array([[0.1, 0.9], [0.8, 0.2]])
    samples = [Sample(1e9, "r", LoadedModel("m", 1, image, None, {}), "v1", "default", inputs, outputs, 0.0)]
    [(path, _, _)] = write_samples(str(tmp_path), "m", samples, "w", Seq())
    table = pq.read_table(path)
    assert float_columns(table) == ["latency_ms", "input.list.element", "output.list.element"]
    assert np.array_equal(np.stack(table["input"].to_numpy(zero_copy_only=False)), inputs)
    metadata = pq.ParquetFile(path).metadata.row_group(0)
    chunks = {metadata.column(i).path_in_schema: metadata.column(i) for i in range(metadata.num_columns)}
    for name in ("input.list.element", "output.list.element", "latency_ms"):
        assert "BYTE_STREAM_SPLIT" in chunks[name].encodings and chunks[name].compression == "ZSTD"
    assert "BYTE_STREAM_SPLIT" not in chunks["request_id"].encodings  # text: never split
    text = DataSchema(input_shape=(), classes=["negative", "positive"], dtype="string")
    strings = [Sample(1e9, "t", LoadedModel("t", 1, text, None, {}), "v1", "default", np.array(["ok"]),
                      np.array([[0.1, 0.9]], np.float32), 0.0)]
    [(path, _, _)] = write_samples(str(tmp_path), "t", strings, "w", Seq())
    assert "input.list.element" not in float_columns(pq.read_table(path))


def test_file_names_sort_by_write_time() -> None:
    early = file_name(datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc), "host-1-abc", 7)
    late = file_name(datetime(2026, 1, 2, 3, 4, 6, tzinfo=timezone.utc), "host-0-abc", 1)
    assert early < late and early.endswith("-host-1-abc-000007.parquet")


def test_maas_status_shows_what_capture_wrote_held_and_dropped() -> None:
    from maas.status import _model_row

    capture = Capture(MODEL, "/r", inline(rate=0.5, max_buffered_rows=1), "r").state()
    capture.update(written_rows=120, dropped_requests=3, last_error="OSError: read-only")
    row = _model_row("app", MODEL, "HEALTHY", 1, {"version": 1, "requests_last_minute": 60,
                                                  "capture": capture})
    assert row["capture"] == ("0.5 of requests: 120 rows spooled, 0 buffered, 3 requests dropped, "
                              "last error: OSError: read-only")
    capture.update(last_error=None, spool={"files": 7, "compactor": {"why": "waiting for a lull"}})
    row = _model_row("app", MODEL, "HEALTHY", 1, {"version": 1, "requests_last_minute": 60,
                                                  "capture": capture})
    assert row["capture"].endswith("3 requests dropped, 7 spool files to compact (waiting for a lull)")


def test_text_and_table_captures_load_as_training_rows(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    text = DataSchema(input_shape=(), classes=["negative", "positive"], dtype="string")
    table = DataSchema(input_shape=(2,), classes=[0, 1], dtype="table", feature_names=["age", "city"],
                       preprocessing={"missing": "refuse", "categorical": {"city": ["x", "y"]},
                                      "numeric_columns": ["age"], "encoding": "embedding",
                                      "embedding_dim": 4})
    _publish(root, text, "reviews")
    _publish(root, table, "customers")
    when = datetime.now(timezone.utc).timestamp() - 3600
    rng = np.random.default_rng(0)
    for name, schema in (("reviews", text), ("customers", table)):
        model = LoadedModel(name, 1, schema, None, {})
        cells = [[repr(float(rng.integers(18, 90))), "xy"[i % 2]] for i in range(60)]
        inputs = (np.array([f"review {i}" for i in range(60)]) if name == "reviews" else
                  np.array(cells, dtype=object))
        samples = [Sample(when + i, f"{name}-{i}", model, "v2", "default", inputs[i:i + 1],
                          np.array([[0.4, 0.6]], np.float32), 0.0) for i in range(60)]
        write_samples(str(root), name, samples, "w", Seq())
        write_feedback(str(root), name, [(when + 100, f"{name}-{i}", [str(schema.classes[i % 2])])
                                         for i in range(60)], "w", Seq())
    reviews = load_dataset(TrainJobConfig.model_validate({"data": {"source": "capture", "capture": {
        "model": "reviews", "since": "1d"}}, "registry": {"root": str(root)}}).data)
    assert reviews.schema.is_text and reviews.x_train.dtype == object
    assert sorted(np.concatenate([reviews.x_train, reviews.x_val, reviews.x_test]).tolist()) == sorted(
        f"review {i}" for i in range(60))
    customers = load_dataset(TrainJobConfig.model_validate({"data": {"source": "capture", "capture": {
        "model": "customers", "since": "1d"}}, "registry": {"root": str(root)}}).data)
    assert customers.schema.is_table and customers.x_train.shape[1:] == (2,)
    assert customers.schema.preprocessing["categorical"] == {"city": ["x", "y"]}  # refitted on the rows
    assert customers.schema.preprocessing["encoding"] == "embedding"  # the captured model's
    rows = np.concatenate([customers.x_train, customers.y_train[:, None].astype(object)], axis=1)
    assert all(row[1] == "xy"[int(row[2])] for row in rows)  # each row kept its own label
