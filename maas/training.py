"""Distributed training: the per-worker loop and ``build_trainer(cfg)``.

Rules learnt the hard way (../shared/notes/ray-tf-facts.md):
* Keras is tf_keras (Keras 2); Keras 3 cannot ``fit`` under MultiWorkerMirroredStrategy.
* Every rank saves the model (saving runs collectives; saving on rank 0 alone deadlocks) and
  every rank calls ``ray.train.report`` once per epoch (it is a barrier); only rank 0 attaches
  the checkpoint.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from maas.config import TrainJobConfig, config_to_dict
from maas.data import Splits, feature_stats, load_dataset, shard_indices
from maas.models import build_model, check_compatible, compile_model
from maas.tfkeras import keras, load_model, save_model, tensorflow

MODEL_FILE = "model.keras"
STATE_FILE = "state.json"
WORKERS_DIR = "workers"


class TrainingInputError(ValueError):
    """The job cannot run as configured; raised on the driver before any worker starts."""


# ---------------------------------------------------------------------------------------------
# Pure helpers (unit-tested without Ray)


def steps_per_epoch(num_rows: int, world_size: int, per_worker_batch: int) -> int:
    """Every worker runs the same number of steps (collectives need it): the smallest shard's."""
    smallest_shard = num_rows // world_size
    return smallest_shard // per_worker_batch


def check_job(cfg: TrainJobConfig, splits: Splits) -> None:
    """Refuse jobs that would crash or hang inside workers, with a message saying why."""
    check_compatible(cfg.model, splits.schema)
    workers, batch = cfg.scaling.num_workers, cfg.training.batch_size
    rows = len(splits.x_train)
    if steps_per_epoch(rows, workers, batch) < 1:
        raise TrainingInputError(
            f"the training split has {rows} rows, fewer than num_workers x batch_size = "
            f"{workers} x {batch} = {workers * batch}: lower training.batch_size or "
            "scaling.num_workers, or use more data"
        )


def default_run_name(cfg: TrainJobConfig) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{cfg.registry.model_name}-{stamp}"


def progress_line(metrics: dict[str, float], epochs: int) -> str:
    shown = " ".join(
        f"{key}={metrics[key]:.4f}"
        for key in ("loss", "accuracy", "val_loss", "val_accuracy")
        if key in metrics
    )
    return (
        f"[train] epoch {int(metrics['epoch'])}/{epochs} {shown} "
        f"time={metrics['epoch_time_s']:.2f}s samples/s={metrics['samples_per_s']:.0f}"
    )


# ---------------------------------------------------------------------------------------------
# Worker side


def _configure_threads(tf: Any, cpus: float) -> None:
    # Each worker owns `cpus` cores; letting TF spawn one thread per machine core oversubscribes.
    threads = max(1, int(cpus))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass  # already initialised in this process (a restarted loop): keep what is set


def _restore_or_build(cfg: TrainJobConfig, splits: Splits) -> tuple[Any, int]:
    """Resume from the run's latest checkpoint if Ray hands one over, else a fresh model."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = json.loads((Path(directory) / STATE_FILE).read_text())
            model = load_model(str(Path(directory) / MODEL_FILE))
        return model, int(state["epoch"])
    mean, variance = feature_stats(splits.x_train)
    model = build_model(cfg.model, splits.schema, mean, variance)
    compile_model(model, cfg.optimizer)
    return model, 0


def _make_dataset_fn(x: np.ndarray, y: np.ndarray, batch: int, seed: int):
    tf = tensorflow()

    def dataset_fn(input_context: Any) -> Any:
        dataset = tf.data.Dataset.from_tensor_slices((x, y))
        dataset = dataset.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        return dataset.repeat().batch(batch, drop_remainder=True).prefetch(2)

    return dataset_fn


class _ReportCallback:
    """Builds the Keras callback that checkpoints and reports once per epoch on every rank."""

    @staticmethod
    def create(rank: int, epochs: int, samples_per_epoch: int) -> Any:
        import ray.train

        class ReportCallback(keras().callbacks.Callback):
            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                self._started = time.perf_counter()

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                elapsed = time.perf_counter() - self._started
                metrics = {key: float(value) for key, value in (logs or {}).items()}
                metrics.update(epoch=epoch + 1, epoch_time_s=elapsed,
                               samples_per_s=samples_per_epoch / max(elapsed, 1e-9))
                with tempfile.TemporaryDirectory() as directory:
                    save_model(self.model, os.path.join(directory, MODEL_FILE))  # every rank
                    if rank == 0:
                        Path(directory, STATE_FILE).write_text(json.dumps({"epoch": epoch + 1}))
                        print(progress_line(metrics, epochs), flush=True)
                        checkpoint = ray.train.Checkpoint.from_directory(directory)
                        ray.train.report(metrics, checkpoint=checkpoint)
                    else:
                        ray.train.report(metrics)

        return ReportCallback()


def _write_worker_record(run_dir: str, record: dict[str, Any]) -> None:
    """One JSON per rank beside the run's checkpoints: what each worker actually trained on."""
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(run_dir) if "://" in run_dir else (
        pafs.LocalFileSystem(), run_dir)
    fs.create_dir(f"{path}/{WORKERS_DIR}", recursive=True)
    with fs.open_output_stream(f"{path}/{WORKERS_DIR}/rank-{record['rank']}.json") as out:
        out.write(json.dumps(record).encode())


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    import ray.train

    cfg = TrainJobConfig.model_validate(loop_config["job"])  # validated again, worker side
    tf = tensorflow()
    _configure_threads(tf, cfg.scaling.cpus_per_worker)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    keras().utils.set_random_seed(cfg.training.seed + rank)

    splits = load_dataset(cfg.data)
    shard = shard_indices(len(splits.x_train), rank, world, cfg.training.seed)
    batch = cfg.training.batch_size
    steps = steps_per_epoch(len(splits.x_train), world, batch)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model, initial_epoch = _restore_or_build(cfg, splits)

    dataset_fn = _make_dataset_fn(splits.x_train[shard], splits.y_train[shard], batch,
                                  cfg.training.seed + rank)
    callback = _ReportCallback.create(rank, cfg.training.epochs, steps * batch * world)
    started = time.perf_counter()
    if initial_epoch < cfg.training.epochs:
        model.fit(
            keras().utils.experimental.DatasetCreator(dataset_fn),
            epochs=cfg.training.epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps,
            validation_data=(splits.x_val, splits.y_val),
            callbacks=[callback],
            verbose=0,
        )
    train_time = time.perf_counter() - started
    test = model.evaluate(splits.x_test, splits.y_test, batch_size=256, verbose=0, return_dict=True)

    _write_worker_record(loop_config["run_dir"], {
        "rank": rank, "world_size": world, "host": socket.gethostname(), "pid": os.getpid(),
        "shard_rows": len(shard), "shard_indices": shard.tolist(),
        "steps_per_epoch": steps, "per_worker_batch": batch,
        "epochs_trained": cfg.training.epochs - initial_epoch, "resumed_from_epoch": initial_epoch,
    })
    epochs_run = cfg.training.epochs - initial_epoch
    return {
        "test_loss": float(test["loss"]),
        "test_accuracy": float(test["accuracy"]),
        "train_time_s": train_time,
        "samples_per_s": epochs_run * steps * batch * world / max(train_time, 1e-9),
        "resumed_from_epoch": initial_epoch,
    }


# ---------------------------------------------------------------------------------------------
# Driver side


@dataclass
class TrainOutcome:
    run_name: str
    run_dir: str
    metrics: dict[str, Any]
    version: Any  # maas.registry.ModelVersion


def build_trainer(cfg: TrainJobConfig, run_name: str) -> Any:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    storage = _absolute_storage(cfg.run.storage_path)
    return TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config={"job": config_to_dict(cfg), "run_dir": f"{storage}/{run_name}"},
        scaling_config=ScalingConfig(
            num_workers=cfg.scaling.num_workers,
            use_gpu=cfg.scaling.use_gpu,
            resources_per_worker={"CPU": cfg.scaling.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.checkpoints_to_keep),
        ),
    )


def _absolute_storage(path: str) -> str:
    return path if "://" in path else str(Path(path).expanduser().resolve())


def run_training(cfg: TrainJobConfig, run_name: str | None = None) -> TrainOutcome:
    """Validate data and config here, train on the cluster, evaluate, register the model."""
    from maas.registry import Registry

    splits = load_dataset(cfg.data)  # bad data fails here, before any worker starts
    check_job(cfg, splits)
    run_name = run_name or cfg.run.name or default_run_name(cfg)
    trainer = build_trainer(cfg, run_name)
    result = trainer.fit()
    metrics = dict(result.return_value or {})
    final_epoch = dict(result.metrics or {})
    if result.checkpoint is None:
        raise RuntimeError(f"training run '{run_name}' finished without a checkpoint")
    with result.checkpoint.as_directory() as directory, tempfile.TemporaryDirectory() as staged:
        Path(staged, MODEL_FILE).write_bytes(Path(directory, MODEL_FILE).read_bytes())
        version = Registry(cfg.registry.root).publish(
            cfg.registry.model_name,
            staged,
            _version_metadata(cfg, splits, run_name, metrics, final_epoch, result.checkpoint.path),
        )
    run_dir = f"{_absolute_storage(cfg.run.storage_path)}/{run_name}"
    return TrainOutcome(run_name, run_dir, metrics, version)


def _version_metadata(cfg: TrainJobConfig, splits: Splits, run_name: str,
                      test_metrics: dict[str, Any], final_epoch: dict[str, Any],
                      checkpoint_path: str) -> dict[str, Any]:
    import ray

    return {
        "metrics": {**{k: v for k, v in final_epoch.items() if isinstance(v, (int, float))},
                    **test_metrics},
        "config": config_to_dict(cfg),
        "schema": splits.schema.to_dict(),
        "run_id": run_name,
        "lineage": {
            "data_source": splits.schema.source,
            "data_fingerprint": splits.fingerprint,
            "split_sizes": splits.sizes(),
            "checkpoint": checkpoint_path,
        },
        "framework": {
            "ray": ray.__version__,
            "tensorflow": tensorflow().__version__,
            "keras": keras().__version__,
        },
        "format": MODEL_FILE,
    }
