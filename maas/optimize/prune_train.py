"""The ``pruned`` variant's fine-tuning as a Ray Train run, on training's own machinery: the same
trainer (``DataParallelTrainer`` with ``maas.tfbackend``'s Keras backend: TF_CONFIG per worker,
MultiWorkerMirroredStrategy above one worker, each rank on its own shard of the training split),
the same fault tolerance (``FailureConfig(max_failures)``, a checkpoint every epoch, a restarted
group resuming from the last one), the same per-rank progress records
(``<storage>/<run>/workers/progress-rank-N.jsonl``, which the fault test reads).

A checkpoint holds the wrapped model's weights as ``.npz`` (kernels, masks, thresholds and each
layer's ``pruning_step``, so the sparsity schedule carries on where it stopped; Adam's moments
start afresh after a restart), not a model file: the pruning wrappers are not in our Keras
loader's allow-list, and the wrapped model is rebuilt the same way from the parent's bytes on
every rank and on the driver (``prune.wrap_for_pruning``). The driver strips the last
checkpoint's weights into the plain Keras model that is published (``prune.strip``).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from maas.errors import MaasError, ModelError
from maas.optimize.prune import PruneJob

WEIGHTS_FILE = "wrapped_weights.npz"
STATE_FILE = "state.json"


def prune_on_ray(job: PruneJob, x_train: np.ndarray, y_train: np.ndarray, storage_path: str,
                 run_name: str | None = None) -> Any:
    """Run the fine-tuning on the cluster (joined as ``python -m train`` joins it), then strip the
    result here: a ``prune.Pruned``."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from maas.raycluster import init_ray
    from maas.storage import absolute
    from maas.tfbackend import KerasBackendConfig
    from maas.training import REPORT_POLL_ENV, REPORT_POLL_INTERVAL_S

    init_ray()
    # as build_trainer: Ray Train's controller collects reports (and registers checkpoints) every
    # 2 s by default, so short epochs would wait for it and a restart could miss the last one
    os.environ.setdefault(REPORT_POLL_ENV, REPORT_POLL_INTERVAL_S)
    run_name = run_name or f"prune-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    storage = absolute(storage_path)
    loop_config = {"job": job, "x": ray.put(x_train), "y": ray.put(y_train),
                   "run_dir": f"{storage}/{run_name}"}
    trainer = DataParallelTrainer(
        prune_loop_per_worker, backend_config=KerasBackendConfig(), train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=job.workers,
                                     resources_per_worker={"CPU": job.cpus_per_worker}),
        run_config=RunConfig(name=run_name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=job.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)))
    try:
        result = trainer.fit()
    except MaasError:
        raise
    except Exception as exc:  # Ray's TrainingFailedError wraps what the workers raised
        raise ModelError(f"{job.what}: the pruning run '{run_name}' failed: {exc}") from None
    if result.checkpoint is None:
        raise ModelError(f"{job.what}: the pruning run '{run_name}' finished without a checkpoint")
    with result.checkpoint.as_directory() as directory:
        weights = _read_weights(Path(directory))
    return strip_weights(job, weights, len(x_train))


def strip_weights(job: PruneJob, weights: list[np.ndarray], rows: int) -> Any:
    """The wrapped parent rebuilt without any strategy, given the run's weights, stripped."""
    from maas.optimize.prune import strip

    wrapped, names = job.wrapped_parent(rows)
    wrapped.set_weights(weights)
    return strip(wrapped, names)


# ---------------------------------------------------------------------------------------------
# Worker side


def prune_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    import ray
    import ray.train

    from maas.data import shard_indices
    from maas.optimize.prune import compile_for_finetuning, tfmot
    from maas.tfkeras import keras, tensorflow
    from maas.training import _choose_strategy, _configure_threads

    job: PruneJob = config["job"]
    tf = tensorflow()
    _configure_threads(tf, job.cpus_per_worker)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    keras().utils.set_random_seed(job.seed + rank)
    x, y = ray.get(config["x"]), ray.get(config["y"])
    shard = shard_indices(len(x), rank, world, job.seed)
    steps = job.steps_per_epoch(len(x))
    with _choose_strategy(tf, world, False).scope():
        wrapped, _ = job.wrapped_parent(len(x))
        compile_for_finetuning(wrapped, job.learning_rate)
        start = _restore(wrapped)
    if start < job.epochs:
        wrapped.fit(**_feed(job, x[shard], y[shard], world, steps, rank), epochs=job.epochs,
                    initial_epoch=start, verbose=0,
                    callbacks=[tfmot().sparsity.keras.UpdatePruningStep(),  # first: it remasks
                               _report_callback(config["run_dir"], rank, job.epochs)])
    return {"resumed_from_epoch": start}


def _feed(job: PruneJob, x: np.ndarray, y: np.ndarray, world: int, steps: int, rank: int) -> dict[str, Any]:
    """``fit``'s data arguments, as training gives them (``maas.training._training_input``)."""
    from maas.tfkeras import keras
    from maas.training import _as_model_input, _make_dataset_fn

    if world == 1:
        return {"x": _as_model_input(x), "y": y, "batch_size": job.batch_size, "shuffle": True}
    dataset_fn = _make_dataset_fn(x, y, job.batch_size, job.seed + rank)
    return {"x": keras().utils.experimental.DatasetCreator(dataset_fn), "steps_per_epoch": steps}


def _restore(wrapped: Any) -> int:
    """The epoch to start from: the last checkpoint's, its weights loaded, or 0."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as directory:
        state = json.loads((Path(directory) / STATE_FILE).read_text())
        wrapped.set_weights(_read_weights(Path(directory)))
    return int(state["epoch"])


def _read_weights(directory: Path) -> list[np.ndarray]:
    with np.load(io.BytesIO((directory / WEIGHTS_FILE).read_bytes())) as stored:
        return [stored[f"arr_{i}"] for i in range(len(stored.files))]


def _report_callback(run_dir: str, rank: int, epochs: int) -> Any:
    """Every rank reports every epoch (a barrier); rank 0 attaches the checkpoint."""
    import ray.train

    from maas.tfkeras import keras
    from maas.training import _append_progress

    class ReportEpoch(keras().callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            metrics = {key: float(value) for key, value in (logs or {}).items()}
            metrics["epoch"] = epoch + 1
            _append_progress(run_dir, rank, {"epoch": epoch + 1, "pid": os.getpid(), "time": time.time()})
            if rank == 0:
                print(f"[optimize] pruning epoch {epoch + 1}/{epochs} loss={metrics.get('loss', 0):.4f} "
                      f"accuracy={metrics.get('accuracy', 0):.4f}", flush=True)
            # every rank reads, as training saves on every rank: under MWMS a variable synchronised
            # on read (BatchNormalization's moving statistics) is all-reduced when it is read
            weights = self.model.get_weights()
            if rank != 0:
                ray.train.report(metrics)
                return
            with tempfile.TemporaryDirectory() as directory:
                np.savez(Path(directory) / WEIGHTS_FILE, *weights)
                Path(directory, STATE_FILE).write_text(json.dumps({"epoch": epoch + 1}))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))

    return ReportEpoch()
