"""Training throughput, side by side in one run: the same model, data and global batch as
(a) plain single-process tf_keras ``fit``, (b) our Ray Train loop with 1 worker x all cores,
(c) our Ray Train loop with N workers x 1 core. Samples/s are taken after a warm-up epoch.

    .venv/bin/python bench/train_throughput.py [--quick] [--steps-per-execution 1]

Last line: RESULT a_sps=.. b_sps=.. c_sps=.. b_over_a=.. c_over_b=.. startup_s=..
(the MLP's figures at global batch 256 for a/b, the CNN's c/b, as the issue asks).
"""

from __future__ import annotations

import argparse
import json
import os
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
compile_model(model, cfg.optimizer)
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


def plain_fit(case: Case, data: Path, epochs: int, work: Path) -> float:
    """(a): a user's own single-process `fit` on numpy arrays, in a fresh process."""
    overrides = job_overrides(case, data, 1, epochs, 1, work)
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps-per-execution", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="MLP at batch 256 only")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from maas.raycluster import init_ray

    init_ray("local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    cores = os.cpu_count()
    rows, summary = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for case in CASES[:1] if args.quick else CASES:
            data = write_data(case, work)
            a = plain_fit(case, data, args.epochs, work)
            b, startup_b = ray_train(case, data, 1, args.epochs, args.steps_per_execution, work,
                                     f"{case.name}-b")
            c, startup_c = ray_train(case, data, cores, args.epochs, args.steps_per_execution, work,
                                     f"{case.name}-c")
            summary[case.name] = dict(a=a, b=b, c=c, startup=(startup_b + startup_c) / 2)
            rows.append(f"{case.name:<10} {a:>10.0f} {b:>10.0f} {c:>10.0f} {b / a:>6.2f} {c / b:>6.2f} "
                        f"{startup_b:>8.1f} {startup_c:>8.1f}")
            print(rows[-1], flush=True)
    print(f"\nsteps_per_execution={args.steps_per_execution}, {cores} cores, samples/s after warm-up")
    print(f"{'case':<10} {'a plain':>10} {'b 1x' + str(cores):>10} {'c ' + str(cores) + 'x1':>10} "
          f"{'b/a':>6} {'c/b':>6} {'start_b':>8} {'start_c':>8}")
    print("\n".join(rows))
    mlp = summary["mlp_b256"]
    cnn = summary.get("cnn_b256", mlp)
    print(f"RESULT a_sps={mlp['a']:.0f} b_sps={mlp['b']:.0f} c_sps={mlp['c']:.0f} "
          f"b_over_a={mlp['b'] / mlp['a']:.2f} c_over_b={cnn['c'] / cnn['b']:.2f} "
          f"startup_s={mlp['startup']:.1f}")


if __name__ == "__main__":
    main()
