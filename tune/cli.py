"""``python -m tune``: search hyperparameters and architectures; register the best model."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from maas.errors import MaasError
from maas.tuning import SweepOutcome, TuneJobConfig, load_tune_config


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tune", description=__doc__)
    parser.add_argument("--config", required=True, help="sweep YAML, e.g. configs/tune/digits.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a sweep value, e.g. search.num_samples=4 or name=nightly")
    parser.add_argument("--address", default=None, help="Ray address (default: $RAY_ADDRESS or local)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    parser.add_argument("--check", action="store_true", help="validate the sweep and exit")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg, base = load_tune_config(args.config, args.overrides)
        print(f"[tune] sweep '{cfg.name}': {cfg.search.num_samples} trials over "
              f"{', '.join(cfg.search.space)}; {cfg.search.algorithm} search, "
              f"scheduler {cfg.search.scheduler}, metric {cfg.search.metric} ({cfg.search.mode})",
              flush=True)
        if args.check:
            return 0
        from maas.raycluster import init_ray
        from maas.tuning import run_sweep

        init_ray(args.address)
        outcome = run_sweep(cfg, base, resume=args.resume)
    except MaasError as exc:  # what a user can fix (Ctrl-C: exit 130); a bug keeps its traceback
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    _print_summary(outcome, cfg)
    return 0


def _print_summary(outcome: SweepOutcome, cfg: TuneJobConfig) -> None:
    metric = cfg.search.metric
    rows = sorted(outcome.rows, key=lambda r: r[f"final_{metric}"], reverse=cfg.search.mode == "max")
    counts = {s: sum(r["status"] == s for r in rows) for s in ("completed", "stopped", "error")}
    print(f"\n[tune] {len(rows)} trials: {counts['completed']} completed, {counts['stopped']} stopped "
          f"early, {counts['error']} failed; {sum(r['epochs_run'] for r in rows)} epochs in all")
    for row in rows[:5]:
        params = " ".join(f"{k.removeprefix('param.')}={v}" for k, v in row.items() if k.startswith("param."))
        print(f"  {row['trial'][-12:]:<12} {metric}={row[f'final_{metric}']:.4f} "
              f"epochs={row['epochs_run']} {row['status']:<9} {params}")
    version = outcome.version
    print(f"[tune] best: {outcome.best['trial']} -> registered {version.name} version "
          f"{version.version} (test_accuracy={version.metadata['metrics']['test_accuracy']:.4f})")
    print(f"[tune] results: {outcome.csv}  plot: {outcome.png}")
