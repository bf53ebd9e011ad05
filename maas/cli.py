"""``python -m maas models list|show``: what the registry holds; ``status``: the cluster on one
screen; ``serve versions|rollback|refresh|show``: what a running Serve app serves."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

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
    _add_serve_commands(groups)
    return parser.parse_args(argv)


def _add_serve_commands(groups: argparse._SubParsersAction) -> None:
    serve = groups.add_parser("serve", help="change what a running Serve application serves")
    actions = serve.add_subparsers(dest="action", required=True)
    parsers = {
        "versions": actions.add_parser("versions", help="set the version policy, labels, default, polling"),
        "rollback": actions.add_parser("rollback", help="pin the version before the one served now"),
        "refresh": actions.add_parser("refresh", help="re-read the registry now (new versions)"),
        "show": actions.add_parser("show", help="print the model's current user_config"),
    }
    for parser in parsers.values():
        parser.add_argument("model")
        parser.add_argument("--app", default="maas", help="Serve application name (default: maas)")
        parser.add_argument("--address", default=None,
                            help="Ray dashboard URL (default: $RAY_DASHBOARD_ADDRESS, an http "
                                 "$RAY_ADDRESS, or http://127.0.0.1:8265)")
    versions = parsers["versions"]
    versions.add_argument("--versions", help="'latest', 'latest:N' or numbers like '3,4'")
    versions.add_argument("--label", action="append", default=[],
                          help="NAME=VERSION, NAME=latest, or NAME= to remove; repeatable")
    versions.add_argument("--default", help="label for requests naming no version ('' clears)")
    versions.add_argument("--poll", type=float, help="seconds between registry polls (0: off)")
    parsers["rollback"].add_argument("--to", type=int, help="this version instead of the previous one")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.group == "status":
        from maas.status import collect, render

        print(render(collect(args.address)))
        return 0
    if args.group == "serve":
        return serve_command(args)
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


def serve_command(args: argparse.Namespace) -> int:
    from maas.errors import ConfigError
    from maas.servectl import ServeCtlError, apply, version_changes
    from maas.serving import ModelSettings

    def edit(current: ModelSettings) -> dict[str, Any]:
        return version_changes(args.versions, args.label, args.default, args.poll, current)

    try:
        settings = apply(args.address, args.app, args.model, args.action, getattr(args, "to", None),
                         args.registry, edit if args.action == "versions" else None)
    except (ServeCtlError, ConfigError, LookupError) as exc:  # RegistryError is a LookupError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ConnectionError, RuntimeError) as exc:  # dashboard unreachable or refused
        print(f"error: could not reach the Ray dashboard: {exc}", file=sys.stderr)
        return 1
    verb = "current" if args.action == "show" else "deployed"
    print(f"{args.model} ({verb} user_config): {json.dumps(settings)}")
    return 0
