"""Sharded training on the shared cluster: 4 npz shard files, 2 workers, each opening only its own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from maas.config import TrainJobConfig, load_config
from maas.data import load_dataset
from maas.registry import Registry
from maas.shards import write_shards
from tests.conftest import REPO

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def shard_job(workspace: Path) -> TrainJobConfig:
    from sklearn import datasets

    digits = datasets.load_digits()
    write_shards(digits.images[:400].astype(np.float32), digits.target[:400], workspace / "shards", 4)
    return load_config(REPO / "configs/train/digits_shards.yaml", [
        f"data.path={workspace / 'shards'}", f"registry.root={workspace / 'registry'}",
        f"run.storage_path={workspace / 'runs'}", "training.epochs=2", "model.hidden_units=[32]"])


@pytest.fixture(scope="module")
def sharded_run(ray_cluster: None, shard_job: TrainJobConfig):
    from maas.training import load_checked_data, run_training

    return run_training(shard_job, run_name="it-shards", splits=load_checked_data(shard_job))


def test_each_rank_opened_exactly_its_own_files(sharded_run, workspace: Path) -> None:
    files = sorted(str(p) for p in (workspace / "shards").glob("*.npz"))
    records = [json.loads(p.read_text())
               for p in sorted(Path(sharded_run.run_dir, "workers").glob("rank-*.json"))]
    assert [r["rank"] for r in records] == [0, 1]
    assert records[0]["data_files"] == [files[0], files[2]]
    assert records[1]["data_files"] == [files[1], files[3]]
    assert set(records[0]["data_files"]).isdisjoint(records[1]["data_files"])
    # both ranks ran the smallest rank's steps, over their own training rows
    assert records[0]["steps_per_epoch"] == records[1]["steps_per_epoch"] >= 1
    assert records[0]["steps_per_epoch"] == min(r["shard_rows"] for r in records) // 32


def test_sharded_model_trains_registers_and_reports_every_test_row(sharded_run, shard_job) -> None:
    version = Registry(shard_job.registry.root).get("digits_shards")
    assert version.version == sharded_run.version.version
    meta = version.metadata
    history = meta["metrics"]
    assert history["epoch"] == 2 and 0.0 < history["val_accuracy"] <= 1.0
    assert meta["lineage"]["data_files"] == 4
    everything = load_dataset(shard_job.data)  # every file's parts, for checking only
    assert meta["lineage"]["split_sizes"] == everything.sizes()
    assert meta["lineage"]["data_fingerprint"] == everything.fingerprint
    confusion = np.asarray(meta["confusion_matrix"])
    assert confusion.sum() == len(everything.x_test)
    assert np.trace(confusion) / confusion.sum() == pytest.approx(history["test_accuracy"])
    from maas.tfkeras import load_model

    model = load_model(str(Registry(shard_job.registry.root).fetch(version) / "model.keras"))
    predicted = np.asarray(model(everything.x_test, training=False)).argmax(axis=1)
    assert float((predicted == everything.y_test).mean()) == pytest.approx(history["test_accuracy"])
    # the last epoch's validation, all-reduced over both ranks, covers every file's validation rows
    predicted = np.asarray(model(everything.x_val, training=False)).argmax(axis=1)
    assert float((predicted == everything.y_val).mean()) == pytest.approx(history["val_accuracy"])
