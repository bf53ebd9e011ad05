"""Sharded data sets (maas/shards.py): discovery, assignment, per-file splits, streamed statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from maas.config import DataConfig, TrainJobConfig
from maas.data import feature_stats, load_dataset
from maas.errors import ConfigError, DataError
from maas.schema import validate_config
from maas.shards import (
    RunningStats,
    assign,
    discover,
    is_sharded,
    load_rank_shards,
    scan_shards,
    split_file,
    write_shards,
)


def _digits(rows: int = 400) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets

    digits = datasets.load_digits()
    return digits.images[:rows].astype(np.float32), digits.target[:rows]


@pytest.fixture
def shard_dir(tmp_path: Path) -> Path:
    write_shards(*_digits(), tmp_path / "shards", 4)
    return tmp_path / "shards"


def _cfg(path: Path | str, **extra) -> DataConfig:
    return DataConfig(source=extra.pop("source", "npz"), path=str(path), **extra)


# --- discovery and assignment ---------------------------------------------------------------


def test_a_directory_lists_its_shard_files_sorted_and_nothing_else(shard_dir: Path) -> None:
    (shard_dir / "_SUCCESS").write_text("")
    (shard_dir / ".part-00009.npz").write_text("")
    (shard_dir / "notes.txt").write_text("x")
    assert is_sharded(_cfg(shard_dir))
    assert [p.name for p in discover(_cfg(shard_dir))] == [f"part-0000{i}.npz" for i in range(4)]


def test_a_glob_matches_files_and_a_relative_glob_is_made_absolute(shard_dir: Path, monkeypatch) -> None:
    assert [p.name for p in discover(_cfg(shard_dir / "part-0000[13].npz"))] == \
        ["part-00001.npz", "part-00003.npz"]
    monkeypatch.chdir(shard_dir.parent)
    cfg = _cfg("shards/part-*.npz")
    assert cfg.path == str(shard_dir / "part-*.npz") and len(discover(cfg)) == 4


def test_one_file_is_not_sharded(shard_dir: Path) -> None:
    assert not is_sharded(_cfg(shard_dir / "part-00000.npz"))
    assert not is_sharded(DataConfig())


def test_nothing_matching_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="matches no file"):
        discover(_cfg(tmp_path / "missing-*.npz"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no .npz file"):
        discover(_cfg(tmp_path / "empty"))


def test_csv_and_unstreamable_options_are_refused_for_shards(shard_dir: Path) -> None:
    with pytest.raises(ConfigError, match="for npz and parquet"):
        is_sharded(_cfg(shard_dir, source="csv"))
    with pytest.raises(ConfigError, match="impute_median"):
        is_sharded(_cfg(shard_dir, missing="impute_median"))


def test_files_go_round_robin_by_rank() -> None:
    files = [f"f{i}" for i in range(5)]
    assert assign(files, 2) == [["f0", "f2", "f4"], ["f1", "f3"]]
    assert assign(files, 1) == [files]


def test_fewer_files_than_workers_is_refused_naming_both_counts() -> None:
    with pytest.raises(ConfigError, match=r"3 file\(s\) but scaling.num_workers is 4"):
        assign(["a", "b", "c"], 4)


# --- files that disagree ----------------------------------------------------------------------


def test_shard_files_with_different_shapes_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", x=np.zeros((30, 4), np.float32), y=np.arange(30) % 2)
    np.savez(tmp_path / "b.npz", x=np.zeros((30, 5), np.float32), y=np.arange(30) % 2)
    with pytest.raises(DataError, match=r"shard files disagree: '.*b.npz' has x rows of shape \[5\]"):
        scan_shards(_cfg(tmp_path))


def test_parquet_shards_with_different_columns_are_refused(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": np.arange(40.0), "b": np.arange(40.0), "label": np.arange(40) % 2})
    frame.to_parquet(tmp_path / "p0.parquet")
    frame.rename(columns={"b": "c"}).to_parquet(tmp_path / "p1.parquet")
    with pytest.raises(DataError, match="shard files disagree"):
        scan_shards(_cfg(tmp_path, source="parquet"))


def test_a_shard_without_the_label_column_is_named(tmp_path: Path) -> None:
    pd.DataFrame({"a": [1.0, 2.0], "y": [0, 1]}).to_parquet(tmp_path / "p0.parquet")
    with pytest.raises(DataError, match="p0.parquet' has no label column 'label'"):
        scan_shards(_cfg(tmp_path, source="parquet"))


# --- splits, statistics, plan -----------------------------------------------------------------


def test_a_file_splits_the_same_way_whatever_else_exists(tmp_path: Path) -> None:
    x, y = _digits()
    write_shards(x, y, tmp_path / "four", 4)
    write_shards(x[:200], y[:200], tmp_path / "two", 2)  # the same first two files
    cfg4, cfg2 = _cfg(tmp_path / "four"), _cfg(tmp_path / "two")
    two, four = load_dataset(cfg2), load_dataset(cfg4)
    np.testing.assert_array_equal(two.x_train, four.x_train[:len(two.x_train)])
    np.testing.assert_array_equal(two.x_test, four.x_test[:len(two.x_test)])
    labels = y[:100]
    first, again = split_file(labels, cfg4, "f"), split_file(labels, cfg4, "f")
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert sum(map(len, first)) == 100 and len(first[2]) == 15  # the job's fractions, per file


def test_streamed_statistics_equal_those_of_all_training_rows(shard_dir: Path) -> None:
    data, everything = scan_shards(_cfg(shard_dir)), load_dataset(_cfg(shard_dir))
    mean, variance = feature_stats(everything.x_train)
    np.testing.assert_allclose(data.mean, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(data.variance, variance, rtol=1e-5, atol=1e-6)
    assert data.mean.shape == (8, 8) and data.variance[0, 0] == 1.0  # a blank corner pixel
    assert data.sizes() == everything.sizes() and sum(data.sizes().values()) == 400
    assert data.fingerprint == everything.fingerprint
    assert data.schema.classes == everything.schema.classes == list(range(10))
    assert data.schema.input_shape == (8, 8)
    np.testing.assert_array_equal(data.x_val, everything.x_val[:len(data.x_val)])


def test_running_statistics_merge_chunks_exactly_with_gaps() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(1000.0, 0.01, size=(300, 3)).astype(np.float32)  # a large mean, a small spread
    x[:, 2] = 7.0  # constant: variance 1
    x[rng.random(300) < 0.1, 0] = np.nan
    stats = RunningStats((3,))
    for chunk in np.array_split(x, [10, 11, 200]):
        stats.add(chunk)
    mean, variance = stats.result()
    expected_mean, expected_variance = feature_stats(x)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-6)
    np.testing.assert_allclose(variance, expected_variance, rtol=1e-3)
    assert variance[2] == 1.0


def test_classes_come_from_every_file_even_when_one_lacks_some(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    np.savez(tmp_path / "a.npz", x=x, y=np.array(["cat", "dog"] * 20))
    np.savez(tmp_path / "b.npz", x=x, y=np.array(["cat", "dog", "eel", "eel"] * 10))
    data = scan_shards(_cfg(tmp_path))
    assert data.schema.classes == ["cat", "dog", "eel"]
    assert load_dataset(_cfg(tmp_path)).schema.classes == ["cat", "dog", "eel"]
    with pytest.raises(DataError, match=r"b.npz'.*\['eel'\] outside the declared data.classes"):
        scan_shards(_cfg(tmp_path, classes=["cat", "dog"]))


def test_parquet_shards_keep_feature_names_and_impute_with_streamed_means(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for index in range(3):
        frame = pd.DataFrame({"a": rng.normal(size=50), "b": rng.normal(size=50),
                              "label": rng.choice(["no", "yes"], size=50)})
        frame.loc[frame.index[:5], "a"] = np.nan
        frame.to_parquet(tmp_path / f"part-{index}.parquet")
    cfg = _cfg(tmp_path, source="parquet", missing="impute_mean")
    data, everything = scan_shards(cfg), load_dataset(cfg)
    assert data.schema.feature_names == ["a", "b"]
    fill = np.nanmean(everything.x_train.astype(np.float64), axis=0)
    np.testing.assert_allclose(data.schema.preprocessing["fill"], fill, rtol=1e-6)
    np.testing.assert_allclose(data.mean, feature_stats(everything.x_train)[0], rtol=1e-5)


def test_a_worker_reads_only_its_own_files(shard_dir: Path, monkeypatch) -> None:
    cfg = _cfg(shard_dir)
    plan = scan_shards(cfg).worker_plan(world=2, batch=32)
    everything = load_dataset(cfg)
    opened: list[str] = []
    real_load = np.load

    def spy(path, *args, **kwargs):
        opened.append(str(path))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    own = load_rank_shards(plan, cfg, rank=1, world=2)
    files = sorted(str(p) for p in shard_dir.glob("*.npz"))
    assert own.files == [files[1], files[3]] and sorted(set(opened)) == [files[1], files[3]]
    assert len(own.splits.x_test) == 0  # the driver evaluates the test parts
    # a file splits as it would alone: its rows are files 1 and 3's own training parts
    alone = [load_dataset(_cfg(shard_dir / f"part-0000{i}.npz")) for i in (1, 3)]
    np.testing.assert_array_equal(own.splits.x_train, np.concatenate([a.x_train for a in alone]))
    np.testing.assert_array_equal(own.splits.y_train, np.concatenate([a.y_train for a in alone]))
    np.testing.assert_array_equal(own.splits.x_val, np.concatenate([a.x_val for a in alone]))
    assert {r.tobytes() for r in own.splits.x_train} <= {r.tobytes() for r in everything.x_train}


def test_steps_per_epoch_are_the_smallest_ranks(tmp_path: Path) -> None:
    x, y = _digits(500)
    write_shards(x, y, tmp_path, 5)  # 100 rows each: 70 training rows per file
    data = scan_shards(_cfg(tmp_path))
    assert data.train_rows_per_rank(2) == [210, 140]
    assert data.steps_per_epoch(2, 32) == 140 // 32
    assert data.worker_plan(2, 32)["steps"] == 4 and data.steps_per_epoch(1, 32) == 350 // 32


def test_check_job_refuses_too_few_files_or_rows(shard_dir: Path) -> None:
    from maas.training import TrainingInputError, check_job

    data = scan_shards(_cfg(shard_dir))

    def job(workers: int, batch: int) -> TrainJobConfig:
        return validate_config(TrainJobConfig, {
            "data": {"source": "npz", "path": str(shard_dir)},
            "scaling": {"num_workers": workers}, "training": {"batch_size": batch}}, "test")

    check_job(job(2, 32), data)
    with pytest.raises(ConfigError, match=r"4 file\(s\) but scaling.num_workers is 5"):
        check_job(job(5, 8), data)
    with pytest.raises(TrainingInputError, match="140 training rows, fewer than training.batch_size 200"):
        check_job(job(2, 200), data)
