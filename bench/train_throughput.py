"""Training throughput, side by side in one run: the same model, data, global batch and
``steps_per_execution`` as (a) plain single-process tf_keras ``fit`` on numpy arrays, (b) our Ray
Train loop with 1 worker x all cores, (c) our Ray Train loop with N workers x 1 core. Samples/s
are taken after a warm-up epoch; each case runs ``--repeat`` times, interleaved (a, b, c, a, b,
c, ...), and the ratios are the median of the per-round ratios, with their min-max spread.

    .venv/bin/python bench/train_throughput.py [--repeat 3] [--cases mlp_b256,mlp_b1024] [--no-c]
                                               [--steps-per-execution 8]

Last line: RESULT <case>_b_over_a=median <case>_b_over_a_spread=min-max ... for every case run,
plus the medians of a/b/c samples/s and the start-up seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


@dataclass(frozen=True)
class Case:
    name: str
    model: dict
    input_shape: tuple[int, ...]
    rows: int
    global_batch: int


CASES = [
    Case("mlp_b256", {"type": "mlp", "hidden_units": [256, 128], "dropout": 0.0}, (784,), 32768, 256),
    Case("mlp_b1024", {"type": "mlp", "hidden_units": [256, 128], "dropout": 0.0}, (784,), 65536, 1024),
    Case("cnn_b256", {"type": "cnn", "conv_filters": [32, 64, 64], "hidden_units": [64], "dropout": 0.0},
         (32, 32, 3), 8192, 256),
]


def write_data(case: Case, directory: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.random((case.rows, *case.input_shape), dtype=np.float32)
    y = rng.integers(0, 10, case.rows)
    path = directory / f"{case.name}.npz"
    np.savez(path, x=x, y=y)
    return path


def job_overrides(case: Case, data: Path, workers: int, epochs: int, spe: int, work: Path) -> list[str]:
    return [
        "data.source=npz", f"data.path={data}", "data.val_fraction=0.01", "data.test_fraction=0.01",
        f"model={json.dumps(case.model)}", f"training.epochs={epochs}",
        f"training.batch_size={case.global_batch // workers}", f"training.steps_per_execution={spe}",
        f"scaling.num_workers={workers}", f"scaling.cpus_per_worker={os.cpu_count() // workers}",
        "scaling.use_gpu=false", "run.max_failures=0", f"run.storage_path={work}/runs",
        f"registry.root={work}/registry", "registry.model_name=bench",
    ]


PLAIN = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from maas.config import TrainJobConfig, apply_overrides
from maas.schema import validate_config
from maas.data import load_dataset, feature_stats
from maas.models import build_model, compile_model
from maas.tfkeras import keras
cfg = validate_config(TrainJobConfig, apply_overrides({}, json.loads(sys.argv[2])))
splits = load_dataset(cfg.data)
model = build_model(cfg.model, splits.schema, *feature_stats(splits.x_train))
compile_model(model, cfg.optimizer, 1, cfg.training.steps_per_execution)
times = []
class Timer(keras().callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None): self.t = time.perf_counter()
    def on_epoch_end(self, epoch, logs=None): times.append(time.perf_counter() - self.t)
batch = cfg.training.batch_size
model.fit(splits.x_train, splits.y_train, batch_size=batch, epochs=cfg.training.epochs,
          callbacks=[Timer()], verbose=0)
steps = len(splits.x_train) // batch
print(json.dumps({"sps": [steps * batch / t for t in times]}))
"""


def plain_fit(case: Case, data: Path, epochs: int, spe: int, work: Path) -> float:
    """(a): a user's own single-process `fit` on numpy arrays, in a fresh process."""
    overrides = job_overrides(case, data, 1, epochs, spe, work)
    out = subprocess.run([sys.executable, "-c", PLAIN, str(REPO), json.dumps(overrides)],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}).stdout
    return float(np.median(json.loads(out.strip().splitlines()[-1])["sps"][1:]))


def ray_train(case: Case, data: Path, workers: int, epochs: int, spe: int, work: Path,
              name: str) -> tuple[float, float]:
    """(b)/(c): our real training loop; returns (samples/s after warm-up, start-up seconds)."""
    from maas.config import TrainJobConfig, apply_overrides
    from maas.schema import validate_config
    from maas.training import build_trainer

    cfg = validate_config(TrainJobConfig, apply_overrides({}, job_overrides(case, data, workers, epochs,
                                                                            spe, work)))
    started = time.perf_counter()
    result = build_trainer(cfg, name).fit()
    wall = time.perf_counter() - started
    history = result.return_value["history"]
    sps = float(np.median([h["samples_per_s"] for h in history[1:]]))
    startup = wall - sum(h["epoch_time_s"] for h in history)
    return sps, startup


def median_spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def run_round(case: Case, data: Path, args: argparse.Namespace, work: Path, round_: int) -> dict:
    cores, spe = os.cpu_count(), args.steps_per_execution
    a = plain_fit(case, data, args.epochs, spe, work)
    b, startup = ray_train(case, data, 1, args.epochs, spe, work, f"{case.name}-b-{round_}")
    c = None
    if not args.no_c:
        c, _ = ray_train(case, data, cores, args.epochs, spe, work, f"{case.name}-c-{round_}")
    line = f"{case.name:<10} round {round_}: a={a:.0f} b={b:.0f} b/a={b / a:.2f}"
    print(line + (f" c={c:.0f} c/b={c / b:.2f}" if c else "") + f" start_b={startup:.1f}s", flush=True)
    return {"a": a, "b": b, "c": c, "startup": startup}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps-per-execution", type=int, default=8,
                        help="the same on every side (a, b and c)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per case (median, spread)")
    parser.add_argument("--cases", default="mlp_b256,mlp_b1024",
                        help=f"comma-separated, of {','.join(c.name for c in CASES)}")
    parser.add_argument("--no-c", action="store_true", help="skip the N workers x 1 core side")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from maas.raycluster import init_ray

    init_ray("local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    cases = [c for c in CASES if c.name in args.cases.split(",")]
    runs: dict[str, list[dict]] = {c.name: [] for c in cases}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = {case.name: write_data(case, work) for case in cases}
        for round_ in range(args.repeat):  # interleaved, so that drift hits every side alike
            for case in cases:
                runs[case.name].append(run_round(case, data[case.name], args, work, round_))
    print(f"\nsteps_per_execution={args.steps_per_execution} on every side, {os.cpu_count()} cores, "
          f"samples/s after warm-up, median (min-max) of {args.repeat} rounds")
    fields = []
    for name, rounds in runs.items():
        a, b = [r["a"] for r in rounds], [r["b"] for r in rounds]
        ratio = median_spread([r["b"] / r["a"] for r in rounds])
        print(f"{name:<10} a={statistics.median(a):.0f} b={statistics.median(b):.0f} "
              f"b/a={ratio[0]:.2f} ({ratio[1]:.2f}-{ratio[2]:.2f})")
        fields += [f"{name}_a_sps={statistics.median(a):.0f}", f"{name}_b_sps={statistics.median(b):.0f}",
                   f"{name}_b_over_a={ratio[0]:.2f}", f"{name}_b_over_a_spread={ratio[1]:.2f}-{ratio[2]:.2f}"]
        if not args.no_c:
            c_over_b = median_spread([r["c"] / r["b"] for r in rounds])
            print(f"{'':<10} c={statistics.median(r['c'] for r in rounds):.0f} "
                  f"c/b={c_over_b[0]:.2f} ({c_over_b[1]:.2f}-{c_over_b[2]:.2f})")
            fields += [f"{name}_c_over_b={c_over_b[0]:.2f}"]
        fields.append(f"{name}_startup_s={statistics.median(r['startup'] for r in rounds):.1f}")
    print("RESULT " + " ".join([*fields, f"repeat={args.repeat}",
                                f"steps_per_execution={args.steps_per_execution}"]))


if __name__ == "__main__":
    main()
