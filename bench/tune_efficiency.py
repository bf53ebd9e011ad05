"""ASHA against running every trial to completion, on the same search space and the same sampled
configurations (same seed), in one run. Prints epochs trained, wall time and the best validation
accuracy each found.

    .venv/bin/python bench/tune_efficiency.py [--samples 8] [--epochs 12]

Last line: RESULT asha_epochs=.. full_epochs=.. epoch_fraction=.. asha_best=.. full_best=.. acc_gap=..
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def sweep(scheduler: str, samples: int, epochs: int, work: Path) -> tuple[int, float, float]:
    from maas.tuning import load_tune_config, run_sweep

    cfg, base = load_tune_config(REPO / "configs/tune/digits.yaml", [
        f"name=bench-{scheduler}", f"storage_path={work}/sweeps", f"search.scheduler={scheduler}",
        f"search.num_samples={samples}", f"train_overrides.training.epochs={epochs}",
        "search.time_budget_s=3600", "search.max_concurrent_trials=2",
    ])
    started = time.perf_counter()
    outcome = run_sweep(cfg, base)
    wall = time.perf_counter() - started
    rows = outcome.rows
    return sum(r["epochs_run"] for r in rows), wall, max(r["best_val_accuracy"] for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from maas.raycluster import init_ray

    # Two logical CPUs per core and two trials side by side, each trial one worker of one CPU:
    # on 2 cores that keeps both cores busy, as tests/integration does.
    init_ray("local", num_cpus=2 * os.cpu_count(), include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MAAS_REGISTRY"] = f"{tmp}/registry"
        asha = sweep("asha", args.samples, args.epochs, Path(tmp))
        full = sweep("none", args.samples, args.epochs, Path(tmp))
    print(f"\n{'':<6} {'epochs':>7} {'wall_s':>8} {'best_val_acc':>13}")
    for name, (epochs, wall, best) in (("asha", asha), ("full", full)):
        print(f"{name:<6} {epochs:>7} {wall:>8.1f} {best:>13.4f}")
    print(f"RESULT asha_epochs={asha[0]} full_epochs={full[0]} epoch_fraction={asha[0] / full[0]:.2f} "
          f"asha_best={asha[2]:.4f} full_best={full[2]:.4f} acc_gap={full[2] - asha[2]:.4f} "
          f"asha_wall_s={asha[1]:.0f} full_wall_s={full[1]:.0f}")


if __name__ == "__main__":
    main()
