"""``python -m optimize``: registered version -> variants (ONNX, int8 ONNX, SavedModel) -> each
checked against the parent, measured on its test split and registered as a new version.

Needs no Ray for ONNX, int8, SavedModel and TFLite variants: run it anywhere the registry is
reachable, or as ``ray job submit -- python -m optimize ...`` to run it on the cluster's head node.
A ``pruned`` variant fine-tunes as a Ray Train run (``workers``, 1 by default; 0: in this process):
it joins ``--address``, ``$RAY_ADDRESS``, the cluster of the job it runs in, or starts a local one,
as ``python -m train`` does.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from maas.config import default_registry_root
from maas.errors import MaasError


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m optimize", description=__doc__)
    parser.add_argument("--model", required=True, metavar="NAME[:VERSION]",
                        help="the version to optimise: NAME (latest), NAME:3 or NAME:LABEL")
    parser.add_argument("--recipe", action="append", required=True,
                        help="recipe YAML, e.g. configs/optimize/default.yaml; repeat to overlay")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. evaluation.repeats=200")
    parser.add_argument("--registry", default=None,
                        help="registry root (default: $MAAS_REGISTRY or ~/.maas/registry)")
    parser.add_argument("--report", default=None, metavar="PATH.png",
                        help="also draw the trade-off (accuracy vs latency, size) as a PNG there")
    parser.add_argument("--check", action="store_true", help="validate the recipe and the model, then exit")
    parser.add_argument("--address", default=None,
                        help="Ray address for a pruned variant's training run (default: $RAY_ADDRESS, "
                             "the job's cluster, or a local one)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _run(args)
    except MaasError as exc:  # what a user can fix: a message; a bug keeps its traceback
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def _run(args: argparse.Namespace) -> int:
    from maas.optimize.recipe import load_recipe
    from maas.optimize.source import parse_model_ref
    from maas.registry import Registry

    recipe = load_recipe(args.recipe, args.overrides)
    name, version = parse_model_ref(args.model)
    registry = Registry(args.registry or default_registry_root())
    entry = registry.get(name, version)
    print(f"[optimize] {name} version {entry.version}: variants "
          f"{', '.join(v.display_name for v in recipe.variants)}", flush=True)
    if args.check:
        return 0
    from maas.optimize.pipeline import format_table, run_recipe

    if any(variant.kind == "pruned" and variant.workers for variant in recipe.variants):
        from maas.raycluster import init_ray

        init_ray(args.address)  # before any work: a named cluster that is down fails here

    outcome = run_recipe(registry, name, str(entry.version), recipe)
    print("\n" + format_table(outcome), flush=True)
    if args.report:
        from maas.optimize.report import write_tradeoff_png

        print(f"[optimize] trade-off picture: {write_tradeoff_png(outcome, args.report)}", flush=True)
    published = {row.variant: row.version for row in outcome.rows[1:] if row.version is not None}
    print("RESULT " + json.dumps({"model": name, "parent_version": entry.version, "published": published,
                                  "refused": len(outcome.refusals)}), flush=True)
    for refusal in outcome.refusals:
        print(f"error: {refusal}", file=sys.stderr)
    return outcome.refusals[0].exit_code if outcome.refusals else 0
