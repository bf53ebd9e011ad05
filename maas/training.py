"""Distributed training: the per-worker loop and ``build_trainer(cfg)``.

Rules learnt the hard way (docs/keras-on-ray.md says how each was checked):
* Keras is tf_keras (Keras 2); Keras 3 cannot ``fit`` under MultiWorkerMirroredStrategy.
* Every rank saves the model (saving runs collectives; saving on rank 0 alone deadlocks) and
  every rank calls ``ray.train.report`` once per epoch (it is a barrier); only rank 0 attaches
  the checkpoint, on the epochs that are checkpointed (``run.checkpoint_every_epochs``).
* The per-epoch history travels inside the checkpoint, so a run restarted after a worker died
  keeps the epochs it had already checkpointed and does not repeat them.
* Where a run's time goes is printed as ``[train] phase <name> <seconds>`` lines (``PHASES``).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from maas.config import TrainJobConfig, config_to_dict
from maas.data import Splits, feature_stats, load_dataset, shard_indices
from maas.errors import ConfigError, ModelError
from maas.models import build_model, check_compatible, compile_model, effective_learning_rate
from maas.resume import check_resumable
from maas.shards import ShardedData, is_sharded, iter_test_parts, load_rank_shards, scan_shards
from maas.storage import absolute, filesystem_for, replace_file
from maas.tfkeras import keras, load_model, save_model, tensorflow

MODEL_FILE = "model.keras"
STATE_FILE = "state.json"
WORKERS_DIR = "workers"
PLACEMENT_GROUP_KEY = "placement_group_id"  # reported each epoch beside the metrics

# Ray Train's controller takes one report per worker per poll and polls every 2 s by default;
# a worker's result queue holds one report, so every epoch after the first waits for a poll:
# epochs shorter than the interval all last ~2 s (docs/keras-on-ray.md, "Report pacing").
REPORT_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
REPORT_POLL_INTERVAL_S = "0.1"


class TrainingInputError(ConfigError):
    """The job cannot run as configured; raised on the driver before any worker starts."""


class NoModelError(ModelError):
    """A run or sweep ended without a checkpointed model, so there is nothing to register."""


# The phases of a training job, in order; together they account for its wall time.
PHASES = ("data", "worker_start", "fit", "checkpoints", "test_eval", "worker_stop", "publish")


# ---------------------------------------------------------------------------------------------
# Pure helpers (unit-tested without Ray)


def steps_per_epoch(num_rows: int, world_size: int, per_worker_batch: int) -> int:
    """Every worker runs the same number of steps (collectives need it): the smallest shard's."""
    smallest_shard = num_rows // world_size
    return smallest_shard // per_worker_batch


def check_job(cfg: TrainJobConfig, splits: Splits | ShardedData) -> None:
    """Refuse jobs that would crash or hang inside workers, with a message saying why."""
    check_compatible(cfg.model, splits.schema)
    workers, batch = cfg.scaling.num_workers, cfg.training.batch_size
    if isinstance(splits, ShardedData):
        _check_shard_job(splits, workers, batch)
        return
    rows = len(splits.x_train)
    if steps_per_epoch(rows, workers, batch) < 1:
        raise TrainingInputError(
            f"the training split has {rows} rows, fewer than num_workers x batch_size = "
            f"{workers} x {batch} = {workers * batch}: lower training.batch_size or "
            "scaling.num_workers, or use more data"
        )


def _check_shard_job(data: ShardedData, workers: int, batch: int) -> None:
    rows = data.train_rows_per_rank(workers)  # refuses fewer files than workers
    smallest = min(range(workers), key=rows.__getitem__)
    if rows[smallest] < batch:
        raise TrainingInputError(
            f"rank {smallest}'s shard files hold {rows[smallest]} training rows, fewer than "
            f"training.batch_size {batch} (training rows per rank: {rows}): every worker runs the "
            "smallest rank's steps; lower training.batch_size or scaling.num_workers, or balance "
            "the files")


def check_capacity(cfg: TrainJobConfig, cluster: dict[str, float], use_gpu: bool) -> None:
    """A fixed-size cluster that cannot place every worker would wait forever: say so instead."""
    if cfg.scaling.autoscaling:
        return
    per_worker = cfg.scaling.worker_resources(use_gpu)
    for resource, amount in per_worker.items():
        needed = amount * cfg.scaling.num_workers
        if cluster.get(resource, 0.0) + 1e-9 < needed:
            raise ModelError(
                f"scaling.num_workers={cfg.scaling.num_workers} workers need {needed:g} {resource} "
                f"({amount:g} each) but the cluster has {cluster.get(resource, 0.0):g}: lower "
                "num_workers or the per-worker resources, or set scaling.autoscaling=true on a "
                "cluster that grows"
            )


def resolve_use_gpu(setting: str | bool, cluster: dict[str, float]) -> bool:
    has_gpus = cluster.get("GPU", 0.0) > 0
    if setting == "auto":
        return has_gpus
    if setting and not has_gpus:
        raise ModelError("scaling.use_gpu=true but the cluster has no GPUs; use auto or false")
    return bool(setting)


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


def should_checkpoint(epoch: int, every: int, epochs: int) -> bool:
    """Whether 1-based ``epoch`` writes a checkpoint: every ``every``-th, and always the last so
    that the finished run has its final model."""
    return epoch % every == 0 or epoch >= epochs


def phase_line(name: str, seconds: float) -> str:
    return f"[train] phase {name} {seconds:.2f}"


def training_throughput(samples: int, train_seconds: float) -> float:
    """Samples per second of training proper: ``train_seconds`` excludes validation and
    checkpoint writing, which do not grow with the data a step trains on."""
    return samples / train_seconds if train_seconds > 0 else 0.0


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> list[list[int]]:
    """Rows: true class, columns: predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=int)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix.tolist()


# ---------------------------------------------------------------------------------------------
# Worker side: setup -> fit -> evaluate and record


def _configure_threads(tf: Any, cpus: float) -> None:
    # Each worker owns `cpus` cores; letting TF spawn one thread per machine core oversubscribes.
    threads = max(1, int(cpus))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass  # already initialised in this process (a restarted loop): keep what is set


@dataclass
class _Start:
    model: Any
    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def _restore_or_build(cfg: TrainJobConfig, splits: Splits, world: int,
                      stats: tuple[np.ndarray, np.ndarray] | None = None) -> _Start:
    """Resume from the run's latest checkpoint if Ray hands one over, else a fresh model.
    ``stats``: the training split's feature mean and variance when this rank holds only part of
    it (shards: the driver's, over every file)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = json.loads((Path(directory) / STATE_FILE).read_text())
            model = load_model(str(Path(directory) / MODEL_FILE))
        return _Start(model, int(state["epoch"]), state.get("history", []))
    mean, variance = stats or feature_stats(splits.x_train)
    texts = splits.x_train if splits.schema.is_text else None
    model = build_model(cfg.model, splits.schema, mean, variance, texts)
    compile_model(model, cfg.optimizer, world, cfg.training.steps_per_execution)
    return _Start(model)


def _as_model_input(x: np.ndarray) -> np.ndarray:
    return x.astype(str) if x.dtype == object else x


def _make_dataset_fn(x: np.ndarray, y: np.ndarray, batch: int, seed: int):
    tf = tensorflow()
    x = _as_model_input(x)

    def dataset_fn(input_context: Any) -> Any:
        dataset = tf.data.Dataset.from_tensor_slices((x, y))
        dataset = dataset.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        return dataset.repeat().batch(batch, drop_remainder=True).prefetch(2)

    return dataset_fn


def _choose_strategy(tf: Any, world: int, use_gpu: bool) -> Any:
    # One worker has nobody to all-reduce with: no strategy at all (TensorFlow's default one places
    # ops on the GPU when there is one). MWMS, and even OneDeviceStrategy, cost per step: on the
    # MLP of bench/train_throughput.py, OneDeviceStrategy's scope alone cost ~11% (docs/keras-on-ray.md).
    if world == 1:
        return tf.distribute.get_strategy()
    return tf.distribute.MultiWorkerMirroredStrategy()


@dataclass
class WorkerSetup:
    """What one rank trains: its config, place in the group, data shard and model."""

    cfg: TrainJobConfig
    rank: int
    world: int
    run_dir: str
    splits: Splits
    shard: np.ndarray
    steps: int
    start: _Start
    files: list[str] | None = None  # shards: the files this rank opened (None: one data set)

    @property
    def sharded(self) -> bool:
        return self.files is not None

    @property
    def samples_per_epoch(self) -> int:
        if self.world == 1:  # Keras' own array feed: every row, the last batch partial
            return len(self.shard)
        return self.steps * self.cfg.training.batch_size * self.world


def setup_worker(loop_config: dict[str, Any]) -> WorkerSetup:
    """Threads, seeds, strategy, this rank's data shard, and the model (restored or new)."""
    import ray.train

    cfg = TrainJobConfig.model_validate(loop_config["job"])  # validated again, worker side
    use_gpu = bool(loop_config.get("use_gpu", False))
    tf = tensorflow()
    _configure_threads(tf, cfg.scaling.worker_resources(use_gpu).get("CPU", 1))
    if use_gpu and cfg.training.mixed_precision:
        keras().mixed_precision.set_global_policy("mixed_float16")
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    keras().utils.set_random_seed(cfg.training.seed + rank)

    plan, files, stats = loop_config.get("shards"), None, None
    if plan is None:
        splits = load_dataset(cfg.data)
        shard = shard_indices(len(splits.x_train), rank, world, cfg.training.seed)
        steps = steps_per_epoch(len(splits.x_train), world, cfg.training.batch_size)
    else:  # this rank's files only; all of its training rows are its shard
        own = load_rank_shards(plan, cfg.data, rank, world)
        splits, files, steps = own.splits, own.files, int(plan["steps"])
        shard = np.arange(len(splits.x_train))
        stats = (np.asarray(plan["mean"], np.float32), np.asarray(plan["variance"], np.float32))
        print(f"[train] rank {rank} opened {len(files)} shard files ({len(shard)} training rows): "
              f"{', '.join(files)}", flush=True)
    if world == 1:  # Keras' array feed keeps the last, partial batch
        steps = -(-len(shard) // cfg.training.batch_size)
    with _choose_strategy(tf, world, use_gpu).scope():
        start = _restore_or_build(cfg, splits, world, stats)
    return WorkerSetup(cfg, rank, world, loop_config["run_dir"], splits, shard, steps, start, files)


@dataclass
class FitTimes:
    """Where a rank's ``fit`` time went. ``train_s`` (the part that trains on batches) and
    ``checkpoint_s`` (saving and reporting checkpoints) are both inside ``fit_s``."""

    fit_s: float = 0.0
    train_s: float = 0.0
    checkpoint_s: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


def fit_worker(setup: WorkerSetup) -> FitTimes:
    """Train the remaining epochs; the callback reports (and checkpoints) each one."""
    cfg, times = setup.cfg, FitTimes(history=list(setup.start.history))
    if setup.start.epoch >= cfg.training.epochs:
        return times  # a resumed run that had already finished
    started = time.perf_counter()
    trained = threading.Event()
    failures: list[BaseException] = []

    def fit() -> None:
        try:
            setup.start.model.fit(
                **_training_input(setup),
                epochs=cfg.training.epochs,
                initial_epoch=setup.start.epoch,
                **_validation_input(setup),
                callbacks=[_make_report_callback(setup, times), _signal_train_end(trained)],
                verbose=0,
            )
        except BaseException as error:  # handed to the loop's thread, which raises it
            failures.append(error)
        finally:
            trained.set()

    # fit() runs in a thread of its own, and the loop goes on once the last epoch is reported:
    # under MultiWorkerMirroredStrategy, destroying fit()'s input iterator after the last epoch
    # took 0-50 s on one rank (the other waited for it in its next collective). That teardown
    # then finishes in the background; nothing waits for it (docs/keras-on-ray.md).
    threading.Thread(target=fit, name="keras-fit", daemon=True).start()
    trained.wait()
    if failures:
        raise failures[0]
    times.fit_s = time.perf_counter() - started
    return times


def _validation_input(setup: WorkerSetup) -> dict[str, Any]:
    """``fit``'s validation arguments. Shards: none; ranks hold validation parts of different
    sizes, which Keras' own validation under MWMS would split again and run for unequal step
    counts (a hang). The report callback validates them instead (``_shard_validation``)."""
    if setup.sharded:
        return {}
    return {"validation_data": (_as_model_input(setup.splits.x_val), setup.splits.y_val),
            "validation_batch_size": 256}


def _shard_validation(setup: WorkerSetup) -> Any:
    """A function of the model giving val_loss and val_accuracy over the validation parts of
    every rank: each rank predicts its own rows locally and one all-reduce adds up the sums."""
    tf = tensorflow()
    x, y = _as_model_input(setup.splits.x_val), setup.splits.y_val
    loss = keras().losses.SparseCategoricalCrossentropy(reduction="sum")

    def validate(model: Any) -> dict[str, float]:
        loss_sum = correct = 0.0
        for start in range(0, len(x), 256):
            probabilities = model(x[start:start + 256], training=False)
            labels = y[start:start + 256]
            loss_sum += float(loss(labels, probabilities))
            correct += float(np.sum(np.argmax(probabilities, axis=1) == labels))
        local = tf.constant([loss_sum, correct, float(len(x))], dtype=tf.float64)
        strategy = model.distribute_strategy
        totals = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(local)),
                                 axis=None).numpy()
        rows = max(totals[2], 1.0)
        return {"val_loss": totals[0] / rows, "val_accuracy": totals[1] / rows}

    return validate


def _signal_train_end(event: threading.Event) -> Any:
    """A callback that sets `event` when fit() has finished its last epoch."""

    class SignalTrainEnd(keras().callbacks.Callback):
        def on_train_end(self, logs: Any = None) -> None:
            event.set()

    return SignalTrainEnd()


def _training_input(setup: WorkerSetup) -> dict[str, Any]:
    """``fit``'s data arguments. One worker: the arrays themselves, shuffled each epoch by Keras,
    whose array feed gathers whole batches (a per-row tf.data pipeline was ~15% slower on the
    bench's MLP). Several: a DatasetCreator per worker over its own shard, as MWMS needs."""
    x, y = setup.splits.x_train[setup.shard], setup.splits.y_train[setup.shard]
    batch = setup.cfg.training.batch_size
    if setup.world == 1:
        return {"x": _as_model_input(x), "y": y, "batch_size": batch, "shuffle": True}
    dataset_fn = _make_dataset_fn(x, y, batch, setup.cfg.training.seed + setup.rank)
    return {"x": keras().utils.experimental.DatasetCreator(dataset_fn), "steps_per_epoch": setup.steps}


def _make_report_callback(setup: WorkerSetup, times: FitTimes) -> Any:
    """The Keras callback that reports once per epoch on every rank (``ray.train.report`` is a
    barrier) and checkpoints on the epochs ``should_checkpoint`` picks."""
    import ray.train

    rank, epochs = setup.rank, setup.cfg.training.epochs
    every = setup.cfg.run.checkpoint_every_epochs
    gauges = _epoch_gauges() if rank == 0 else {}
    validate = _shard_validation(setup) if setup.sharded else None
    placement_group = _current_placement_group_id()

    class ReportCallback(keras().callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self._started = time.perf_counter()
            self._trained: float | None = None

        def on_test_begin(self, logs: Any = None) -> None:
            # Validation starts: the training part of the epoch is over. samples/s counts only it.
            self._trained = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            now = time.perf_counter()
            train_time = (self._trained or now) - self._started
            times.train_s += train_time
            metrics = {key: float(value) for key, value in (logs or {}).items()}
            if validate is not None:  # every rank: it all-reduces
                metrics.update(validate(self.model))
                now = time.perf_counter()
            metrics.update(epoch=epoch + 1, epoch_time_s=now - self._started,
                           samples_per_s=training_throughput(setup.samples_per_epoch, train_time))
            times.history.append(metrics)
            _append_progress(setup.run_dir, rank, {"epoch": epoch + 1, "pid": os.getpid(),
                                                   "time": time.time()})
            if rank == 0:
                print(progress_line(metrics, epochs), flush=True)
                _publish_gauges(gauges, metrics, ray.train.get_context().get_experiment_name())
                metrics = {**metrics, PLACEMENT_GROUP_KEY: placement_group}
            if should_checkpoint(epoch + 1, every, epochs):
                saving = time.perf_counter()
                self._report_with_checkpoint(epoch + 1, metrics)
                times.checkpoint_s += time.perf_counter() - saving
            else:
                ray.train.report(metrics)  # every rank, every epoch: it is a barrier

        def _report_with_checkpoint(self, epoch: int, metrics: dict[str, Any]) -> None:
            with tempfile.TemporaryDirectory() as directory:
                save_model(self.model, os.path.join(directory, MODEL_FILE))  # every rank
                if rank != 0:
                    ray.train.report(metrics)
                    return
                state = {"epoch": epoch, "history": times.history}
                Path(directory, STATE_FILE).write_text(json.dumps(state))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))

    return ReportCallback()


def read_progress(run_dir: str, rank: int) -> list[dict[str, Any]]:
    """What ``_append_progress`` recorded for rank ``rank`` of the run in ``run_dir``: every epoch
    it finished, over all the run's attempts, in order (pid, epoch, time); [] before the first."""
    fs, path = filesystem_for(run_dir)
    try:
        with fs.open_input_stream(f"{path}/{WORKERS_DIR}/progress-rank-{rank}.jsonl") as stream:
            text = stream.read().decode()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _append_progress(run_dir: str, rank: int, record: dict[str, Any]) -> None:
    """One line per rank per epoch beside the checkpoints: which process trained which epoch."""
    fs, path = filesystem_for(run_dir)
    fs.create_dir(f"{path}/{WORKERS_DIR}", recursive=True)
    target = f"{path}/{WORKERS_DIR}/progress-rank-{rank}.jsonl"
    previous = b""
    if fs.get_file_info(target).size:
        with fs.open_input_stream(target) as stream:
            previous = stream.read()
    # rewritten whole (object stores cannot append) and never half-written: a process stopped
    # mid-write (Ctrl-C of a sweep) must not lose the epochs recorded before
    replace_file(fs, target, previous + json.dumps(record).encode() + b"\n")


def _current_placement_group_id() -> str:
    """The worker group's placement group, reported so that a sweep driver can free it: when Tune
    stops a trial it kills the trial's process, which takes the Train controller down before the
    controller removes its placement group, and that group keeps its CPUs until the driver exits
    (Ray's own cleaner for this needs the dashboard's state API; docs/keras-on-ray.md)."""
    from ray.util import get_current_placement_group

    group = get_current_placement_group()
    return group.id.hex() if group is not None else ""


GAUGED = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "samples_per_s")


def _epoch_gauges() -> dict[str, Any]:
    """Per-run training gauges for Prometheus and the dashboard's metrics views (rank 0 only)."""
    from ray.util import metrics

    return {name: metrics.Gauge(f"maas_train_{name}", f"training {name} of the latest epoch",
                                tag_keys=("run",)) for name in GAUGED}


def _publish_gauges(gauges: dict[str, Any], metrics: dict[str, float], run: str) -> None:
    for name, gauge in gauges.items():
        if name in metrics:
            gauge.set(float(metrics[name]), tags={"run": run})


@dataclass(frozen=True)
class TestEvaluation:
    metrics: dict[str, float]  # test_loss, test_accuracy
    confusion: list[list[int]]


def evaluate_on_test(model: Any, splits: Splits) -> TestEvaluation:
    """A model's loss, accuracy and confusion matrix on the test split (workers and driver)."""
    x_test = _as_model_input(splits.x_test)
    scores = model.evaluate(x_test, splits.y_test, batch_size=256, verbose=0, return_dict=True)
    predicted = np.asarray(model(x_test, training=False)).argmax(axis=1)
    return TestEvaluation(
        {"test_loss": float(scores["loss"]), "test_accuracy": float(scores["accuracy"])},
        confusion_matrix(splits.y_test, predicted, splits.schema.num_classes))


def _write_worker_record(run_dir: str, record: dict[str, Any]) -> None:
    """One JSON per rank beside the run's checkpoints: what each worker actually trained on."""
    fs, path = filesystem_for(run_dir)
    fs.create_dir(f"{path}/{WORKERS_DIR}", recursive=True)
    replace_file(fs, f"{path}/{WORKERS_DIR}/rank-{record['rank']}.json", json.dumps(record).encode())


def evaluate_and_record(setup: WorkerSetup, times: FitTimes) -> dict[str, Any]:
    """Test metrics, this rank's record beside the checkpoints, and the loop's return value."""
    cfg = setup.cfg
    evaluating = time.perf_counter()
    # every rank: it may run collectives. Shards: no rank holds the test split; the driver
    # streams every file's test part through the model (run_training).
    test = None if setup.sharded else evaluate_on_test(setup.start.model, setup.splits)
    test_eval_s = time.perf_counter() - evaluating
    epochs_run = cfg.training.epochs - setup.start.epoch
    record = {
        "rank": setup.rank, "world_size": setup.world, "host": socket.gethostname(),
        "pid": os.getpid(), "shard_rows": len(setup.shard), "shard_indices": setup.shard.tolist(),
        "steps_per_epoch": setup.steps, "per_worker_batch": cfg.training.batch_size,
        "epochs_trained": epochs_run, "resumed_from_epoch": setup.start.epoch,
    }
    if setup.sharded:
        record.update(data_files=setup.files, validation_rows=len(setup.splits.x_val))
    _write_worker_record(setup.run_dir, record)
    return {
        **(test.metrics if test else {}),
        "train_time_s": times.fit_s,
        "samples_per_s": training_throughput(epochs_run * setup.samples_per_epoch, times.train_s),
        "resumed_from_epoch": setup.start.epoch,
        "global_batch_size": cfg.training.batch_size * setup.world,
        "learning_rate": effective_learning_rate(cfg.optimizer, setup.world),
        "confusion_matrix": test.confusion if test else None,
        "history": times.history,
        # wall-clock marks and durations; the driver turns them into phase lines
        TIMINGS_KEY: {"fit_s": times.fit_s, "checkpoint_s": times.checkpoint_s,
                      "test_eval_s": test_eval_s},
    }


TIMINGS_KEY = "timings"


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    setup = setup_worker(loop_config)
    ready_at = time.time()
    times = fit_worker(setup)
    result = evaluate_and_record(setup, times)
    result[TIMINGS_KEY].update(ready_at=ready_at, finished_at=time.time())
    return result


# ---------------------------------------------------------------------------------------------
# Driver side


@dataclass
class TrainOutcome:
    run_name: str
    run_dir: str
    metrics: dict[str, Any]
    version: Any  # maas.registry.ModelVersion
    phases: dict[str, float] = field(default_factory=dict)  # seconds per PHASES name


def build_trainer(cfg: TrainJobConfig, run_name: str, use_gpu: bool = False,
                  storage_path: str | None = None, callbacks: list[Any] | None = None,
                  data: Splits | ShardedData | None = None) -> Any:
    """``data``: the driver's view of the data set, if it has one; for shards it holds the plan
    the workers need (files, classes, feature statistics, steps), scanned here when not given."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from maas.tfbackend import KerasBackendConfig

    # Read from this process's environment when fit() starts the controller; a user's own
    # setting wins.
    os.environ.setdefault(REPORT_POLL_ENV, REPORT_POLL_INTERVAL_S)
    storage = absolute(storage_path or cfg.run.storage_path)
    loop_config = {"job": config_to_dict(cfg), "run_dir": f"{storage}/{run_name}", "use_gpu": use_gpu}
    if isinstance(data, ShardedData) or data is None and is_sharded(cfg.data):
        shards = data if isinstance(data, ShardedData) else scan_shards(cfg.data)
        loop_config["shards"] = shards.worker_plan(cfg.scaling.num_workers, cfg.training.batch_size)
    # Ray's TensorflowTrainer is this trainer with a backend config whose module imports
    # TensorFlow into Train's controller; ours sets the same TF_CONFIG without it (maas.tfbackend).
    return DataParallelTrainer(
        train_loop_per_worker,
        backend_config=KerasBackendConfig(),
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=cfg.scaling.num_workers,
            use_gpu=use_gpu,
            resources_per_worker=cfg.scaling.worker_resources(use_gpu),
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.checkpoints_to_keep),
            callbacks=callbacks,
        ),
    )


def choose_run_name(cfg: TrainJobConfig, run_name: str | None = None) -> str:
    """Ray resumes any run whose name exists in storage; make that a decision, not an accident."""
    name = run_name or cfg.run.name
    if name is None:
        if cfg.run.resume:
            raise TrainingInputError("run.resume=true needs run.name (the run to continue)")
        return default_run_name(cfg)
    fs, path = filesystem_for(f"{absolute(cfg.run.storage_path)}/{name}")
    import pyarrow.fs as pafs

    exists = fs.get_file_info(path).type != pafs.FileType.NotFound
    if exists and not cfg.run.resume:
        raise TrainingInputError(
            f"a run named '{name}' already exists in {cfg.run.storage_path}: pass --resume "
            "(run.resume=true) to continue it from its last checkpoint, or choose another run.name"
        )
    if cfg.run.resume and not exists:
        raise TrainingInputError(
            f"run.resume=true but no run named '{name}' exists in {cfg.run.storage_path}")
    if cfg.run.resume:  # a deleted or damaged checkpoint: one message now, not worker retries
        check_resumable(f"{absolute(cfg.run.storage_path)}/{name}", MODEL_FILE, STATE_FILE)
    return name


def load_checked_data(cfg: TrainJobConfig) -> Splits | ShardedData:
    """Load the data set and check the job against it on the driver, before any worker starts;
    prints the ``data`` phase. Sharded data is scanned one file at a time, never held whole,
    and the files each rank will read are printed."""
    started = time.perf_counter()
    splits = scan_shards(cfg.data) if is_sharded(cfg.data) else load_dataset(cfg.data)
    check_job(cfg, splits)
    if isinstance(splits, ShardedData):
        for line in splits.assignment_lines(cfg.scaling.num_workers):
            print(line, flush=True)
    print(phase_line("data", time.perf_counter() - started), flush=True)
    return splits


def worker_phases(timings: dict[str, float], fit_called_at: float,
                  fit_returned_at: float) -> dict[str, float]:
    """Phase seconds from rank 0's timings and the driver's wall clock around ``fit()``. ``fit``
    excludes checkpoint writing, so the phases add up. (Wall clocks of two machines differ a
    little; the start/stop phases are clamped at 0.)"""
    fit_s, checkpoint_s = timings.get("fit_s", 0.0), timings.get("checkpoint_s", 0.0)
    ready_at = timings.get("ready_at", fit_called_at)
    finished_at = timings.get("finished_at", fit_returned_at)
    return {
        "worker_start": max(0.0, ready_at - fit_called_at),
        "fit": max(0.0, fit_s - checkpoint_s),
        "checkpoints": checkpoint_s,
        "test_eval": timings.get("test_eval_s", 0.0),
        "worker_stop": max(0.0, fit_returned_at - finished_at),
    }


def run_training(cfg: TrainJobConfig, run_name: str | None = None,
                 splits: Splits | ShardedData | None = None) -> TrainOutcome:
    """Validate data, config and cluster here; train on the cluster; evaluate; register.

    ``splits``: the data set already loaded and checked by the caller (the CLI does, with
    ``load_checked_data``, to print its plan before Ray starts); otherwise it is loaded here.
    """
    import ray

    if splits is None:
        splits = load_checked_data(cfg)  # bad data fails here, before any worker starts
    cluster = ray.cluster_resources()
    use_gpu = resolve_use_gpu(cfg.scaling.use_gpu, cluster)
    check_capacity(cfg, cluster, use_gpu)
    run_name = choose_run_name(cfg, run_name)
    fit_called_at = time.time()
    # Publishing needs TensorFlow here (SavedModel export); import it while the workers train
    # instead of after them: ~3 s of the job's wall time on 2 cores.
    threading.Thread(target=tensorflow, name="import-tensorflow", daemon=True).start()
    result = build_trainer(cfg, run_name, use_gpu, data=splits).fit()
    metrics = dict(result.return_value or {})
    phases = worker_phases(metrics.pop(TIMINGS_KEY, {}), fit_called_at, time.time())
    sharded = isinstance(splits, ShardedData)
    for name, seconds in phases.items():
        if not (sharded and name == "test_eval"):  # measured below, on the driver
            print(phase_line(name, seconds), flush=True)
    if result.checkpoint is None:
        raise NoModelError(f"training run '{run_name}' finished without a checkpoint, so there is "
                           "no model to register; its log says why")
    with result.checkpoint.as_directory() as directory:
        if sharded:
            evaluating = time.perf_counter()
            test = evaluate_shards(load_model(str(Path(directory) / MODEL_FILE)), splits)
            metrics.update(test.metrics, confusion_matrix=test.confusion)
            phases["test_eval"] = time.perf_counter() - evaluating
            print(phase_line("test_eval", phases["test_eval"]), flush=True)
        publishing = time.perf_counter()
        version = publish_model(PublishRequest(
            cfg=cfg, splits=splits, run_name=run_name, checkpoint_dir=Path(directory),
            checkpoint_uri=result.checkpoint.path, history=metrics.pop("history", []),
            confusion=metrics.pop("confusion_matrix", None), metrics=metrics, use_gpu=use_gpu,
            phases=phases))
    phases["publish"] = time.perf_counter() - publishing
    print(phase_line("publish", phases["publish"]), flush=True)
    return TrainOutcome(run_name, f"{absolute(cfg.run.storage_path)}/{run_name}", metrics, version,
                        phases)


def evaluate_shards(model: Any, data: ShardedData) -> TestEvaluation:
    """Test metrics over every shard's test part, streamed one file at a time: losses and
    correct counts weighted by rows, so they equal ``evaluate_on_test`` on all test rows at once."""
    loss_sum, correct, rows = 0.0, 0, 0
    confusion = np.zeros((data.schema.num_classes,) * 2, dtype=int)
    for x, y in iter_test_parts(data):
        if not len(x):
            continue
        scores = model.evaluate(x, y, batch_size=256, verbose=0, return_dict=True)
        predicted = model.predict(x, batch_size=256, verbose=0).argmax(axis=1)
        loss_sum += float(scores["loss"]) * len(x)
        correct += int((predicted == y).sum())
        rows += len(x)
        confusion += np.asarray(confusion_matrix(y, predicted, data.schema.num_classes))
    if not rows:
        raise ModelError(f"the shard files of {data.schema.source} hold no test rows")
    return TestEvaluation({"test_loss": loss_sum / rows, "test_accuracy": correct / rows},
                          confusion.tolist())


def evaluate_checkpoint(checkpoint_dir: Path, splits: Splits) -> TestEvaluation:
    """Test metrics of a saved model, computed here on the driver (used for tuning winners)."""
    return evaluate_on_test(load_model(str(checkpoint_dir / MODEL_FILE)), splits)


@dataclass(frozen=True)
class PublishRequest:
    """Everything a registered version is made of: the model file of a checkpoint and what the
    run learnt about it (test metrics, history, confusion matrix, lineage)."""

    cfg: TrainJobConfig
    splits: Splits | ShardedData  # ShardedData: its x_val is a sample (the SavedModel check)
    run_name: str
    checkpoint_dir: Path  # a local directory holding MODEL_FILE
    checkpoint_uri: str  # where the checkpoint lives in run storage (lineage)
    metrics: dict[str, Any]  # test metrics and training figures (train_time_s, samples_per_s, ...)
    history: list[dict[str, Any]]
    confusion: list[list[int]] | None
    use_gpu: bool = False
    phases: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the sweep that chose this model


def publish_model(request: PublishRequest) -> Any:
    """Register a checkpoint's model with its report files (learning curve, confusion matrix)
    and a SavedModel in the TensorFlow Serving layout beside ``model.keras`` (checked against it)."""
    from maas.artifacts.savedmodel import METADATA_KEY, write_files
    from maas.registry import Registry
    from maas.reports import write_learning_curve

    with tempfile.TemporaryDirectory() as staged:
        keras_bytes = Path(request.checkpoint_dir, MODEL_FILE).read_bytes()
        Path(staged, MODEL_FILE).write_bytes(keras_bytes)
        saved_model = export_saved_model(keras_bytes, request.splits,
                                         f"model '{request.cfg.registry.model_name}' run {request.run_name}")
        write_files(saved_model.files, staged)
        write_learning_curve(request.history, Path(staged, "learning_curve.png"),
                             title=request.run_name)
        Path(staged, "confusion_matrix.json").write_text(json.dumps(
            {"classes": request.splits.schema.classes,
             "rows_true_columns_predicted": request.confusion}))
        Path(staged, "history.json").write_text(json.dumps(request.history))
        metadata = {**_version_metadata(request), METADATA_KEY: saved_model.block, **request.extra}
        return Registry(request.cfg.registry.root).publish(request.cfg.registry.model_name, staged,
                                                           metadata)


def export_saved_model(keras_bytes: bytes, splits: Splits | ShardedData, what: str) -> Any:
    """The SavedModel of a ``.keras`` file (checked against the allow-list first, like any model
    file read back), compared with Keras on the first validation rows (``maas.artifacts.savedmodel``)."""
    from maas.artifacts.keras_loader import load_keras_bytes
    from maas.artifacts.savedmodel import CHECK_ROWS, export_checked

    model = load_keras_bytes(keras_bytes, MODEL_FILE, what)
    return export_checked(model, splits.x_val[:CHECK_ROWS], what)


def _version_metadata(request: PublishRequest) -> dict[str, Any]:
    import ray

    cfg, splits, figures = request.cfg, request.splits, request.metrics
    final_epoch = request.history[-1] if request.history else {}
    return {
        "metrics": {**final_epoch, **figures},
        "confusion_matrix": request.confusion,
        "config": config_to_dict(cfg),
        "schema": splits.schema.to_dict(),
        "run_id": request.run_name,
        "training": {
            "epochs": len(request.history),
            "train_time_s": figures.get("train_time_s"),
            "samples_per_s": figures.get("samples_per_s"),  # inside fit, without checkpoints
            "num_workers": cfg.scaling.num_workers,
            "use_gpu": request.use_gpu,
            "global_batch_size": figures.get("global_batch_size"),
            "phases_s": dict(request.phases),
        },
        "lineage": {
            "data_source": splits.schema.source,
            "data_fingerprint": splits.fingerprint,
            "split_sizes": splits.sizes(),
            **({"data_files": len(splits.files)} if isinstance(splits, ShardedData) else {}),
            "checkpoint": request.checkpoint_uri,
        },
        "framework": {
            "ray": ray.__version__,
            "tensorflow": tensorflow().__version__,
            "keras": keras().__version__,
        },
        "format": MODEL_FILE,
    }
