"""``python -m train``: load config -> train on Ray -> evaluate -> register the model."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from maas.config import TrainJobConfig, load_config
from maas.errors import MaasError


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__)
    parser.add_argument("--config", action="append", required=True,
                        help="YAML config; repeat to overlay (e.g. configs/train/smoke.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config value, e.g. training.epochs=5")
    parser.add_argument("--address", default=None,
                        help="Ray address (default: $RAY_ADDRESS, the job's cluster, or a local one)")
    parser.add_argument("--run-name", default=None, help="Ray Train run name (default: unique)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run named --run-name (or run.name) from its last checkpoint")
    parser.add_argument("--check", action="store_true",
                        help="validate config and data, print the plan, and exit without training")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        overrides = [*args.overrides, *(["run.resume=true"] if args.resume else [])]
        cfg: TrainJobConfig = load_config(args.config, overrides)
        return _run(cfg, args)
    except MaasError as exc:  # what a user can fix: a message; a bug keeps its traceback
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def _run(cfg: TrainJobConfig, args: argparse.Namespace) -> int:
    from maas.training import choose_run_name, load_checked_data, run_training

    splits = load_checked_data(cfg)
    run_name = choose_run_name(cfg, args.run_name)  # before Ray starts: a run that cannot resume
    print(f"[train] data {splits.schema.source}: {splits.sizes()} rows, input "
          f"{list(splits.schema.input_shape)}, {splits.schema.num_classes} classes; "
          f"{cfg.scaling.num_workers} workers x batch {cfg.training.batch_size}", flush=True)
    if args.check:
        return 0
    from maas.raycluster import init_ray

    init_ray(args.address)
    outcome = run_training(cfg, run_name=run_name, splits=splits)
    version = outcome.version
    print(f"[train] registered {version.name} version {version.version} at {version.uri}")
    print(f"[train] test_accuracy={outcome.metrics['test_accuracy']:.4f} "
          f"test_loss={outcome.metrics['test_loss']:.4f}")
    print("RESULT " + json.dumps({"model": version.name, "version": version.version,
                                  "test_accuracy": round(outcome.metrics["test_accuracy"], 4),
                                  "run": outcome.run_name}), flush=True)
    return 0
