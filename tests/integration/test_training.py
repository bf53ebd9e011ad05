import json
from pathlib import Path

import numpy as np
import pytest

from maas.data import load_dataset
from maas.registry import Registry

pytestmark = pytest.mark.integration


def test_two_workers_trained_on_disjoint_shards_covering_the_data(trained, tiny_job) -> None:
    records = [json.loads(p.read_text()) for p in sorted(Path(trained.run_dir, "workers").glob("*.json"))]
    assert [r["rank"] for r in records] == [0, 1]
    assert {r["pid"] for r in records}.__len__() == 2, "both ranks ran in one process"
    shards = [set(r["shard_indices"]) for r in records]
    assert shards[0].isdisjoint(shards[1])
    train_rows = len(load_dataset(tiny_job.data).x_train)
    assert len(shards[0] | shards[1]) == train_rows
    for record in records:
        assert record["epochs_trained"] == 3 and record["steps_per_epoch"] >= 1


def test_each_epoch_was_checkpointed_and_the_last_kept(trained, tiny_job) -> None:
    checkpoints = sorted(p for p in Path(trained.run_dir).glob("checkpoint_*") if p.is_dir())
    assert len(checkpoints) == tiny_job.run.checkpoints_to_keep
    latest = checkpoints[-1]
    assert (latest / "model.keras").is_file()
    state = json.loads((latest / "state.json").read_text())
    assert state["epoch"] == 3 and [h["epoch"] for h in state["history"]] == [1, 2, 3]


def test_model_is_registered_with_full_metadata(trained, tiny_job) -> None:
    registry = Registry(tiny_job.registry.root)
    version = registry.get("digits_mlp")
    assert version.version == trained.version.version == 1
    meta = version.metadata
    assert 0.0 < meta["metrics"]["test_accuracy"] <= 1.0
    assert meta["metrics"]["epoch"] == 3 and "val_accuracy" in meta["metrics"]
    assert meta["config"]["training"]["epochs"] == 3
    assert meta["schema"]["input_shape"] == [8, 8] and meta["schema"]["classes"] == list(range(10))
    assert meta["run_id"] == "it-digits"
    assert meta["lineage"]["data_source"] == "sklearn:digits"
    assert meta["training"]["samples_per_s"] > 0 and meta["training"]["train_time_s"] > 0
    assert meta["training"]["global_batch_size"] == 64
    confusion = np.asarray(meta["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == meta["lineage"]["split_sizes"]["test"]
    assert np.trace(confusion) / confusion.sum() == pytest.approx(meta["metrics"]["test_accuracy"])
    local = registry.fetch(version)  # content hash holds
    assert (local / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert [h["epoch"] for h in json.loads((local / "history.json").read_text())] == [1, 2, 3]


def test_text_classifier_trains_on_generated_reviews(trained_text) -> None:
    assert trained_text.metrics["test_accuracy"] > 0.8
    assert trained_text.version.metadata["schema"]["dtype"] == "string"


def test_text_model_serves_raw_strings_through_the_compiled_call(trained_text, workspace) -> None:
    from maas.serving.inputs import to_batch
    from maas.serving.model import LoadedModel

    version = trained_text.version
    loaded = LoadedModel.from_registry(str(workspace / "registry"), version.name, version.version)
    reviews = ["a wonderful and moving film", "not good, a boring waste of time", "fine"]
    served = loaded.predict(to_batch(reviews, loaded.schema, 10))
    assert served.shape == (3, 2) and np.allclose(served.sum(axis=1), 1, atol=1e-5)
    direct = np.asarray(loaded.model(np.array(reviews), training=False))
    np.testing.assert_allclose(served, direct, rtol=1e-5, atol=1e-6)


def test_registered_model_reproduces_reported_test_accuracy(trained, tiny_job) -> None:
    from maas.tfkeras import load_model

    registry = Registry(tiny_job.registry.root)
    model = load_model(str(registry.fetch(registry.get("digits_mlp")) / "model.keras"))
    splits = load_dataset(tiny_job.data)
    predicted = np.asarray(model(splits.x_test, training=False)).argmax(axis=1)
    accuracy = float((predicted == splits.y_test).mean())
    assert accuracy == pytest.approx(trained.metrics["test_accuracy"], abs=1e-6)
