"""``python -m maas models list|show NAME``: what the registry holds."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from maas.config import default_registry_root
from maas.registry import Registry, RegistryError


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m maas", description=__doc__)
    parser.add_argument("--registry", default=None,
                        help="registry root (default: $MAAS_REGISTRY or ~/.maas/registry)")
    groups = parser.add_subparsers(dest="group", required=True)
    models = groups.add_parser("models", help="registered models").add_subparsers(
        dest="action", required=True)
    models.add_parser("list", help="one line per model: latest version and its test accuracy")
    show = models.add_parser("show", help="a version's metadata as JSON")
    show.add_argument("name")
    show.add_argument("--version", default="latest", help="number, 'latest' or a label")
    status = groups.add_parser("status", help="cluster resources, jobs and served models, on one screen")
    status.add_argument("--address", default=None, help="Ray address (default: $RAY_ADDRESS or auto)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.group == "status":
        from maas.status import collect, render

        print(render(collect(args.address)))
        return 0
    registry = Registry(args.registry or default_registry_root())
    try:
        if args.action == "list":
            print(list_models(registry))
        else:
            print(json.dumps(registry.get(args.name, args.version).metadata, indent=2))
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def list_models(registry: Registry) -> str:
    names = registry.list_models()
    if not names:
        return f"no models registered in {registry.root_uri}"
    lines = [f"{'MODEL':<24} {'VERSIONS':<12} {'LATEST':>6} {'TEST_ACC':>8}  CREATED"]
    for name in names:
        latest = registry.get(name)
        accuracy = latest.metadata.get("metrics", {}).get("test_accuracy")
        shown = f"{accuracy:.4f}" if isinstance(accuracy, (int, float)) else "-"
        versions = ",".join(map(str, registry.versions(name)))
        lines.append(f"{name:<24} {versions:<12} {latest.version:>6} {shown:>8}  "
                     f"{latest.metadata.get('created_at', '')}")
    return "\n".join(lines)
