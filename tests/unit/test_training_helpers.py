import pytest

from maas.config import TrainJobConfig, validate_config
from maas.data import load_dataset
from maas.models import ModelConfigError
from maas.training import TrainingInputError, check_job, progress_line, steps_per_epoch


def test_steps_follow_the_smallest_shard() -> None:
    assert steps_per_epoch(1000, 2, 32) == 15   # 500 rows per worker // 32
    assert steps_per_epoch(1001, 3, 10) == 33   # 333 rows in the smallest shard
    assert steps_per_epoch(10, 2, 32) == 0


def _job(**sections) -> TrainJobConfig:
    return validate_config(TrainJobConfig, sections)


def test_too_few_rows_for_workers_times_batch_is_refused() -> None:
    job = _job(training={"batch_size": 512}, scaling={"num_workers": 4})
    with pytest.raises(TrainingInputError, match=r"fewer than num_workers x batch_size = 4 x 512"):
        check_job(job, load_dataset(job.data))


def test_cnn_on_tabular_data_is_refused_before_ray() -> None:
    job = _job(data={"source": "breast_cancer"}, model={"type": "cnn"})
    with pytest.raises(ModelConfigError):
        check_job(job, load_dataset(job.data))


def test_progress_line_is_readable() -> None:
    line = progress_line({"epoch": 3, "loss": 0.5, "accuracy": 0.9, "val_loss": 0.6,
                          "val_accuracy": 0.85, "epoch_time_s": 1.25, "samples_per_s": 1000}, 10)
    assert line == ("[train] epoch 3/10 loss=0.5000 accuracy=0.9000 val_loss=0.6000 "
                    "val_accuracy=0.8500 time=1.25s samples/s=1000")
