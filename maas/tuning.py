"""Hyperparameter and architecture search: the sweep schema, the search space, the Tune trial
(one Ray Train run per trial) and the results table and plot.

A search space names the same dotted keys as a training config (``model.hidden_units``,
``optimizer.learning_rate``), so searching an architecture is just searching more config fields.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from maas.config import (
    TrainJobConfig,
    config_to_dict,
    deep_merge,
    default_storage_path,
    nested,
    read_yaml,
)
from maas.errors import ConfigError, InterruptedRunError, ModelError
from maas.schema import NAME_PATTERN, StrictSchema, validate_config
from maas.storage import absolute, filesystem_for, is_uri

# ---------------------------------------------------------------------------------------------
# Schema


class _Interval(StrictSchema):
    @model_validator(mode="after")
    def _ordered(self) -> _Interval:
        if self.low >= self.high:  # type: ignore[attr-defined]
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")  # type: ignore[attr-defined]
        return self


class LogUniform(_Interval):
    type: Literal["loguniform"]
    low: float = Field(gt=0)
    high: float = Field(gt=0)


class Uniform(_Interval):
    type: Literal["uniform"]
    low: float
    high: float


class IntRange(StrictSchema):
    type: Literal["randint"]
    low: int
    high: int = Field(description="inclusive")

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self


class Choice(StrictSchema):
    type: Literal["choice"]
    values: list[Any] = Field(min_length=1)


Domain = Annotated[LogUniform | Uniform | IntRange | Choice, Field(discriminator="type")]


class AshaSection(StrictSchema):
    grace_period: int = Field(2, ge=1, description="epochs every trial gets before it can be stopped")
    reduction_factor: float = Field(2, gt=1)


class SearchSection(StrictSchema):
    metric: str = "val_accuracy"
    mode: Literal["max", "min"] = "max"
    num_samples: int = Field(8, ge=1)
    time_budget_s: float | None = Field(None, gt=0)
    max_concurrent_trials: int | None = Field(None, ge=1, description="default: what the cluster fits")
    algorithm: Literal["random", "optuna"] = "random"
    scheduler: Literal["asha", "none"] = "asha"
    asha: AshaSection = Field(default_factory=AshaSection)
    seed: int = 0
    space: dict[str, Domain] = Field(min_length=1)


class TuneJobConfig(StrictSchema):
    name: str = Field("sweep", pattern=NAME_PATTERN)
    train_config: list[str] = Field(min_length=1, description="training YAML(s), relative to this file")
    train_overrides: dict[str, Any] = Field(default_factory=dict)
    storage_path: str = Field(default_factory=default_storage_path)
    search: SearchSection


def load_tune_config(path: str | Path, overrides: list[str] = ()) -> tuple[TuneJobConfig, TrainJobConfig]:
    """The sweep config and its validated base training config. Every space key is checked
    against the training schema by trying a sample value, before any trial starts."""
    from maas.config import apply_overrides

    path = Path(path)
    raw = apply_overrides(read_yaml(path), overrides)
    tune_cfg: TuneJobConfig = validate_config(TuneJobConfig, raw, str(path))
    base_raw: dict[str, Any] = {}
    for name in tune_cfg.train_config:
        base_raw = deep_merge(base_raw, read_yaml(path.parent / name))
    base_raw = deep_merge(base_raw, tune_cfg.train_overrides)
    base: TrainJobConfig = validate_config(TrainJobConfig, base_raw, f"{path} train_config")
    for key, domain in tune_cfg.search.space.items():
        _check_space_key(base_raw, key, domain, path)
    return tune_cfg, base


def _check_space_key(base_raw: dict[str, Any], key: str, domain: Any, path: Path) -> None:
    samples = domain.values if isinstance(domain, Choice) else [domain.low, domain.high]
    for value in samples:
        try:
            validate_config(TrainJobConfig, deep_merge(base_raw, nested(key.split("."), value)))
        except ConfigError as exc:
            raise ConfigError(f"{path}: search.space.{key} = {value!r} is not a valid training "
                              f"config value:\n{exc}") from None


def trial_config(base: dict[str, Any], sampled: dict[str, Any]) -> dict[str, Any]:
    """The training config of one trial: the base with the sampled dotted keys set."""
    job = base
    for key, value in sampled.items():
        job = deep_merge(job, nested(key.split("."), value))
    return job


def param_space(search: SearchSection) -> dict[str, Any]:
    from ray import tune

    def domain(d: Any) -> Any:
        if isinstance(d, LogUniform):
            return tune.loguniform(d.low, d.high)
        if isinstance(d, Uniform):
            return tune.uniform(d.low, d.high)
        if isinstance(d, IntRange):
            return tune.randint(d.low, d.high + 1)
        return tune.choice(d.values)

    return {key: domain(d) for key, d in search.space.items()}


def concurrent_trials(search: SearchSection, base: TrainJobConfig, cluster_cpus: float) -> int:
    if search.max_concurrent_trials:
        return search.max_concurrent_trials
    # Each running trial holds its workers' CPUs plus the sliver its driving function asks for; a
    # trial admitted without room for its workers waits for them forever (its worker group
    # cannot start while the other trials hold the CPUs), so count both.
    per_trial = base.scaling.num_workers * base.scaling.worker_resources(False).get("CPU", 1.0)
    return max(1, int(cluster_cpus // (per_trial + trial_resources()["cpu"])))


# ---------------------------------------------------------------------------------------------
# The trial: one Ray Train run, metrics forwarded to Tune every epoch


def run_trial(sampled: dict[str, Any], base: dict[str, Any], sweep_dir: str) -> None:
    """One trial: a Train run named after the trial under ``<sweep>/trials``, so a resumed trial
    continues its own run from its last checkpoint (and ``summarise`` finds the run)."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from maas.training import build_trainer

    cfg = TrainJobConfig.model_validate(trial_config(base, sampled))
    trial = ray.tune.get_context().get_trial_name()
    trainer = build_trainer(cfg, trial, use_gpu=False, storage_path=f"{sweep_dir}/trials",
                            callbacks=[TuneReportCallback()])
    trainer.fit()


def release_placement_group(last_result: dict[str, Any] | None) -> bool:
    """Remove the worker-group placement group a finished trial reported, if it still exists.

    Tune stops a trial (ASHA, or the trial reaching its last epoch) by ending the trial's
    process; that takes the trial's Train controller down before it removes its placement group,
    and Ray keeps such a group until the driver exits. Left alone, each stopped trial holds its
    workers' CPUs and the next trials' worker groups wait forever for them."""
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    from maas.training import PLACEMENT_GROUP_KEY

    group_id = (last_result or {}).get(PLACEMENT_GROUP_KEY)
    if not group_id:
        return False
    group = PlacementGroup(ray.PlacementGroupID.from_hex(group_id))
    if ray.util.placement_group_table(group).get("state", "REMOVED") == "REMOVED":
        return False  # the trial ended on its own and its controller cleaned up
    remove_placement_group(group)
    return True


def _placement_group_releaser() -> Any:
    from ray.tune import Callback

    class ReleaseTrialPlacementGroups(Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            release_placement_group(trial.last_result)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            release_placement_group(trial.last_result)

    return ReleaseTrialPlacementGroups()


# ---------------------------------------------------------------------------------------------
# Results


def summarise(result_grid: Any, search: SearchSection, epochs: int,
              runs_root: str | None = None) -> list[dict[str, Any]]:
    """One row per trial: hyperparameters, final and best metric, epochs run, status.

    A trial's epochs come from two records of the same Train run: what Tune recorded, and the
    history saved in the run's latest checkpoint under ``runs_root`` (``<sweep>/trials``). They
    differ after an interrupt: Tune saves its state once at Ctrl-C and records nothing after,
    while the trials' Train runs go on until Tune's cleanup ends them, sometimes to their last
    epoch. Resumed, such a run continues from that checkpoint with nothing left to train or
    report, so Tune alone would show it "stopped" at the epochs it had when the state was saved.
    The checkpoint is what the run actually trained (and what gets registered): it wins."""
    runs = _train_runs(runs_root) if runs_root else {}
    rows = []
    for result in result_grid:
        trial = Path(result.path).name
        checkpoint, saved = _checkpointed_history(runs, trial)
        rows.append(trial_row(
            trial=trial, params=dict(result.config or {}),
            tune_records=_frame_records(result.metrics_dataframe),
            tune_checkpoint=(result.metrics or {}).get("checkpoint_path"),
            saved_history=saved, saved_checkpoint=checkpoint,
            failed=result.error is not None, search=search, epochs=epochs))
    return rows


def trial_row(trial: str, params: dict[str, Any], tune_records: list[dict[str, Any]],
              tune_checkpoint: str | None, saved_history: list[dict[str, Any]],
              saved_checkpoint: str | None, failed: bool, search: SearchSection,
              epochs: int) -> dict[str, Any]:
    """A trial's row from its two records (see ``summarise``): epoch by epoch, the checkpointed
    history where it has the epoch, Tune's record after it (epochs reported without a
    checkpoint); a repeated epoch counts once, its latest report."""
    by_epoch = {int(r["epoch"]): r for r in tune_records if _has_epoch(r)}
    by_epoch.update({int(r["epoch"]): r for r in saved_history if _has_epoch(r)})
    records = [by_epoch[e] for e in sorted(by_epoch)]
    history = [r[search.metric] for r in records if search.metric in r]
    epochs_run = max(by_epoch) if history else 0
    status = "error" if failed else ("completed" if epochs_run >= epochs else "stopped")
    latest_saved = max((int(r["epoch"]) for r in saved_history if _has_epoch(r)), default=0)
    # the checkpoint of the newest epoch either record has one for
    checkpoint = saved_checkpoint if saved_checkpoint and latest_saved >= _checkpoint_epoch(
        tune_records, tune_checkpoint) else tune_checkpoint
    return {
        "trial": trial,
        **{f"param.{k}": _cell(v) for k, v in params.items()},
        f"final_{search.metric}": history[-1] if history else math.nan,
        f"best_{search.metric}": (max if search.mode == "max" else min)(history) if history else math.nan,
        "epochs_run": epochs_run,
        "status": status,
        "checkpoint_path": checkpoint,
        "_history": history,
        "_params": params,
        "_epochs": [{k: r[k] for k in _EPOCH_COLUMNS if k in r} for r in records],
    }


_EPOCH_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")


def _has_epoch(record: dict[str, Any]) -> bool:
    epoch = record.get("epoch")
    return isinstance(epoch, (int, float)) and epoch == epoch  # pandas fills a gap with NaN


def _checkpoint_epoch(records: list[dict[str, Any]], checkpoint: str | None) -> int:
    """The epoch Tune's record reported ``checkpoint`` with (0: none)."""
    matching = [int(r["epoch"]) for r in records
                if checkpoint and _has_epoch(r) and r.get("checkpoint_path") == checkpoint]
    return max(matching, default=0)


def _frame_records(frame: Any) -> list[dict[str, Any]]:
    if frame is None or "epoch" not in frame:
        return []
    return frame.to_dict("records")


def _train_runs(runs_root: str) -> dict[str, str]:
    """The Train runs of a sweep's trials, by name (``run_trial`` names each after its trial)."""
    import pyarrow.fs as pafs

    fs, path = filesystem_for(runs_root)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError:
        return {}
    return {Path(i.path).name: f"{runs_root.rstrip('/')}/{Path(i.path).name}"
            for i in infos if i.type == pafs.FileType.Directory}


def _checkpointed_history(runs: dict[str, str], trial_dir: str) -> tuple[str | None, list[dict[str, Any]]]:
    """The latest checkpoint of a trial's Train run and the history saved in it. Tune names a
    trial's directory ``<trial name>_<tag>_<time>``, so the run is the one named by its prefix."""
    from maas.resume import CheckpointError, checkpoint_state
    from maas.training import STATE_FILE

    run = next((uri for name, uri in runs.items() if trial_dir.startswith(f"{name}_")), None)
    try:
        found = checkpoint_state(run, STATE_FILE) if run else None
    except CheckpointError:
        found = None
    if found is None:
        return None, []  # no usable checkpoint: Tune's record is all there is
    checkpoint, state = found
    history = state.get("history", [])
    return checkpoint, [r for r in history if isinstance(r, dict)] if isinstance(history, list) else []


def _cell(value: Any) -> Any:
    return str(value) if isinstance(value, (list, dict)) else value


def best_row(rows: list[dict[str, Any]], search: SearchSection) -> dict[str, Any]:
    usable = [r for r in rows if r["checkpoint_path"] and not math.isnan(r[f"best_{search.metric}"])]
    if not usable:
        raise NoTrialModelError("no trial finished an epoch with a checkpoint, so there is nothing "
                                "to register: see the trials' errors above, or raise "
                                "search.time_budget_s")
    key = f"final_{search.metric}"
    return (max if search.mode == "max" else min)(usable, key=lambda r: r[key])


def write_results(rows: list[dict[str, Any]], search: SearchSection, directory: Path) -> tuple[Path, Path]:
    import pandas as pd

    directory.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
    csv_path = directory / "results.csv"
    table.sort_values(f"final_{search.metric}", ascending=search.mode == "min").to_csv(csv_path, index=False)
    png_path = directory / "trials.png"
    _plot_trials(rows, search, png_path)
    return csv_path, png_path


def _plot_trials(rows: list[dict[str, Any]], search: SearchSection, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 5))
    best = best_row(rows, search)["trial"] if any(r["checkpoint_path"] for r in rows) else None
    for row in rows:
        history = row["_history"]
        style = "-" if row["status"] == "completed" else ":"
        width = 3 if row["trial"] == best else 1.2
        axis.plot(range(1, len(history) + 1), history, style, linewidth=width, marker="o", markersize=3,
                  label=f"{row['trial'][-5:]} ({row['status']})")
    axis.set_xlabel("epoch")
    axis.set_ylabel(search.metric)
    axis.set_title(f"{search.metric} per epoch (dotted: stopped early, thick: best)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def sweep_dir(cfg: TuneJobConfig) -> str:
    return f"{absolute(cfg.storage_path)}/{cfg.name}"


def trial_resources() -> dict[str, float]:
    # The trial function only drives its TensorflowTrainer; its workers ask for their own CPUs.
    # Tune refuses 0 CPUs, so ask for a sliver.
    return {"cpu": float(os.environ.get("MAAS_TRIAL_CPU", "0.01"))}


# ---------------------------------------------------------------------------------------------
# The sweep


@dataclass(frozen=True)
class SweepOutcome:
    """What a finished sweep produced: one row per trial (see ``summarise``), the best row, the
    version registered from it, and the results table and plot."""

    rows: list[dict[str, Any]]
    best: dict[str, Any]
    version: Any  # maas.registry.ModelVersion
    csv: Path
    png: Path


class NoTrialModelError(ModelError):
    """No trial of a sweep left a checkpointed model, so there is nothing to register."""


def run_sweep(cfg: TuneJobConfig, base: TrainJobConfig, resume: bool = False) -> SweepOutcome:
    """Search, write the results table and plot, register the best trial's model."""
    import ray
    from ray import tune

    from maas.data import load_dataset
    from maas.training import check_job

    splits = load_dataset(base.data)  # bad data or config fails here, before any trial
    check_job(base, splits)
    directory = sweep_dir(cfg)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=config_to_dict(base), sweep_dir=directory),
        trial_resources(),
    )
    exists = tune.Tuner.can_restore(directory) if is_uri(directory) else Path(directory).exists()
    if resume:
        if not exists:
            raise ConfigError(f"--resume: no sweep named '{cfg.name}' in {cfg.storage_path}")
        tuner = tune.Tuner.restore(directory, trainable, resume_unfinished=True, resume_errored=True)
    else:
        if exists:
            raise ConfigError(f"a sweep named '{cfg.name}' already exists in {cfg.storage_path}: pass "
                              "--resume to continue it, or set name to start a new one")
        tuner = _new_tuner(cfg, base, trainable, ray.cluster_resources().get("CPU", 1.0))
    started = time.monotonic()
    with watch_ctrl_c() as ctrl_c:
        grid = tuner.fit()
    if ctrl_c() or _interrupted(grid, cfg.search, time.monotonic() - started):
        # Ctrl-C / SIGTERM: Tune saved its state and returned early. Publishing a winner now would
        # pick from a partial sweep, so stop here and let --resume finish it.
        # (Tune's cleanup marks the trials it ended "terminated" too: no count of finished ones)
        raise SweepInterrupted(
            f"sweep '{cfg.name}' was interrupted before its {cfg.search.num_samples} trials "
            f"finished; continue it with --resume (each trial from its last checkpoint)")
    rows = summarise(grid, cfg.search, base.training.epochs, f"{directory}/trials")
    csv_path, png_path = write_results(rows, cfg.search, _local_results_dir(directory, cfg))
    best = best_row(rows, cfg.search)
    version = _register_best(cfg, base, splits, best, rows)
    return SweepOutcome(rows, best, version, csv_path, png_path)


@contextlib.contextmanager
def watch_ctrl_c() -> Iterator[Callable[[], bool]]:
    """Tell whether Tune stopped on Ctrl-C. Tune swaps in its own SIGINT handler for the run and
    puts the previous one back only when the signal arrives; a run that ends normally leaves its
    handler installed. So "the previous handler is back" means "interrupted"."""
    no_handler = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0") != "0"
    if no_handler or threading.current_thread() is not threading.main_thread():
        yield lambda: False  # Tune installs no handler here
        return
    before = signal.getsignal(signal.SIGINT)
    interrupted = [False]
    try:
        yield lambda: interrupted[0]
    finally:
        interrupted[0] = signal.getsignal(signal.SIGINT) is before
        signal.signal(signal.SIGINT, before)


class SweepInterrupted(InterruptedRunError):
    """The sweep stopped before every trial finished; its state is saved for --resume."""


def _interrupted(grid: Any, search: SearchSection, elapsed_s: float) -> bool:
    finished = grid.num_terminated + grid.num_errors
    if finished < len(grid):
        return True  # trials left pending or paused
    out_of_time = search.time_budget_s is not None and elapsed_s >= search.time_budget_s
    return len(grid) < search.num_samples and not out_of_time


def _new_tuner(cfg: TuneJobConfig, base: TrainJobConfig, trainable: Any, cluster_cpus: float) -> Any:
    from ray import tune

    search = cfg.search
    limit = concurrent_trials(search, base, cluster_cpus)
    scheduler = None
    if search.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=base.training.epochs,
                                  grace_period=min(search.asha.grace_period, base.training.epochs),
                                  reduction_factor=search.asha.reduction_factor)
    if search.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=search.seed)
    else:  # seeded, so two sweeps with the same seed try the same configurations
        from ray.tune.search import BasicVariantGenerator

        # Tune ignores TuneConfig.max_concurrent_trials for a generator passed in: limit it here.
        search_alg = BasicVariantGenerator(random_state=search.seed, max_concurrent=limit)
    return tune.Tuner(
        trainable,
        param_space=param_space(search),
        tune_config=tune.TuneConfig(
            metric=search.metric, mode=search.mode, num_samples=search.num_samples,
            scheduler=scheduler, search_alg=search_alg, time_budget_s=search.time_budget_s,
            max_concurrent_trials=limit if search.algorithm == "optuna" else None,
        ),
        run_config=tune.RunConfig(name=cfg.name, storage_path=absolute(cfg.storage_path),
                                  callbacks=[_placement_group_releaser()]),
    )


def _local_results_dir(directory: str, cfg: TuneJobConfig) -> Path:
    # matplotlib and pandas write local files: a sweep kept in object storage gets them here
    return Path.cwd() / f"{cfg.name}-results" if is_uri(directory) else Path(directory)


def _register_best(cfg: TuneJobConfig, base: TrainJobConfig, splits: Any, best: dict[str, Any],
                   rows: list[dict[str, Any]]) -> Any:
    import pyarrow.fs as pafs

    from maas.training import PublishRequest, evaluate_checkpoint, publish_model

    sampled = best["_params"]
    trial_cfg = TrainJobConfig.model_validate(trial_config(config_to_dict(base), sampled))
    with tempfile.TemporaryDirectory() as local:
        source = best["checkpoint_path"]
        fs, path = filesystem_for(source)
        pafs.copy_files(path, local, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        test = evaluate_checkpoint(Path(local), splits)
        metric = f"best_{cfg.search.metric}"
        return publish_model(PublishRequest(
            cfg=trial_cfg, splits=splits, run_name=best["trial"], checkpoint_dir=Path(local),
            checkpoint_uri=source, metrics={**test.metrics, metric: best[metric]},
            history=best["_epochs"], confusion=test.confusion,
            extra={"sweep": {"name": cfg.name, "trial": best["trial"], "hyperparameters": sampled,
                             "metric": cfg.search.metric, "mode": cfg.search.mode,
                             "trials": len(rows)}}))

