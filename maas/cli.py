"""``python -m maas models list|show``: what the registry holds; ``status``: the cluster on one
screen; ``serve versions|rollback|refresh|show|rollout``: what a running Serve app serves; ``serve
schema``: what a Serve config file may say about our application; ``score``: batch scoring on
Ray Data (``maas/scoring.py``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from maas.config import default_registry_root
from maas.errors import MaasError
from maas.registry import ModelVersion, Registry


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m maas", description=__doc__)
    parser.add_argument("--registry", default=None,
                        help="registry root (default: $MAAS_REGISTRY or ~/.maas/registry)")
    groups = parser.add_subparsers(dest="group", required=True)
    models = groups.add_parser("models", help="registered models").add_subparsers(
        dest="action", required=True)
    models.add_parser("list", help="one line per model: latest version and its test accuracy")
    show = models.add_parser("show", help="a version's metrics, confusion matrix and lineage")
    show.add_argument("name")
    show.add_argument("--version", default="latest", help="number, 'latest' or a label")
    show.add_argument("--json", action="store_true", help="the version's whole metadata as JSON")
    verify = models.add_parser("verify", help="check a version's signature and files by hand")
    verify.add_argument("name")
    verify.add_argument("--version", default="latest", help="number, 'latest' or a label")
    verify.add_argument("--key", default=None,
                        help="Ed25519 public key (PEM file); default $MAAS_VERIFY_KEY")
    keygen = models.add_parser("keygen", help="a new signing key pair: DIR/signing.key and DIR/signing.pub")
    keygen.add_argument("directory")
    keygen.add_argument("--master", action="store_true",
                        help="instead: a master key for encryption at rest, DIR/master.key")
    status = groups.add_parser("status", help="cluster resources, jobs and served models, on one screen")
    status.add_argument("--address", default=None, help="Ray address (default: $RAY_ADDRESS or auto)")
    _add_serve_commands(groups)
    _add_key_commands(groups)
    score = groups.add_parser("score", help="batch scoring on Ray Data: a file of rows -> Parquet "
                                            "with the prediction and class probabilities per row")
    score.add_argument("--model", required=True, help="NAME, NAME:VERSION or NAME:LABEL")
    score.add_argument("--input", required=True, help="Parquet or CSV file or directory (path or URI)")
    score.add_argument("--output", required=True, help="Parquet directory to create (path or URI)")
    score.add_argument("--format", default=None, help="parquet or csv (default: from --input's suffix)")
    score.add_argument("--keep", default="", help="comma-separated input columns copied to the output (ids)")
    score.add_argument("--actors", type=int, default=None, help="model-holding actors (default: CPUs - 1)")
    score.add_argument("--batch-size", type=int, default=None,
                       help="rows per model call (default: about 8 MiB of input per call)")
    score.add_argument("--address", default=None, help="Ray address (default: $RAY_ADDRESS, the "
                                                       "running cluster, or a new local one)")
    audit = groups.add_parser("audit", help="the audit trail beside the registry").add_subparsers(
        dest="action", required=True)
    audit.add_parser("verify", help="check every file's hash chain (edited or deleted lines)")
    show_audit = audit.add_parser("show", help="entries, oldest first")
    show_audit.add_argument("--model", default=None)
    show_audit.add_argument("--since", default=None, help="ISO time, e.g. 2026-11-24 or 2026-11-24T10:00")
    show_audit.add_argument("--action", default=None, help="e.g. model.published, key., prediction")
    show_audit.add_argument("--limit", type=int, default=50, help="the newest this many (0: all)")
    return parser.parse_args(argv)


def _add_key_commands(groups: argparse._SubParsersAction) -> None:
    keys = groups.add_parser("keys", help="scoped API keys for predict (stored hashed beside the registry)")
    keys.add_argument("--file", default=None,
                      help="the key store (default: <registry>/.maas/api_keys.json, as serving reads it)")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a new key, printed once")
    create.add_argument("--models", required=True, help="comma-separated model names, or '*'")
    create.add_argument("--role", default="predict", choices=["predict", "admin"])
    create.add_argument("--rate", type=float, default=None, help="requests per second per replica")
    create.add_argument("--label", default="", help="who or what the key is for")
    actions.add_parser("list", help="ids, scopes and state; never the keys")
    revoke = actions.add_parser("revoke", help="running replicas refuse it within a second or two")
    revoke.add_argument("id")


def _add_serve_commands(groups: argparse._SubParsersAction) -> None:
    serve = groups.add_parser("serve", help="change what a running Serve application serves")
    actions = serve.add_subparsers(dest="action", required=True)
    parsers = {
        "versions": actions.add_parser("versions", help="set the version policy, labels, default, polling"),
        "rollback": actions.add_parser("rollback", help="pin the version before the one served now"),
        "refresh": actions.add_parser("refresh", help="re-read the registry now (new versions)"),
        "show": actions.add_parser("show", help="print the model's current user_config"),
        "rollout": actions.add_parser("rollout", help="where the model's canary rollout stands "
                                                      "(--abort: its weight to 0)"),
    }
    actions.add_parser("schema", help="the JSON schema of our app's args and user_config in a "
                                      "Serve config file (configs/serve/*.yaml)")
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
    parsers["rollout"].add_argument("--abort", action="store_true",
                                    help="stop it: the canary's traffic weight to 0 (stable answers "
                                         "every request naming no version)")
    parsers["rollout"].add_argument("--json", action="store_true", help="the report as JSON")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        print(run(args))
    except MaasError as exc:  # a user's mistake: its message; a bug keeps its traceback
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def run(args: argparse.Namespace) -> str:
    """What the command prints."""
    if args.group == "status":
        from maas.status import collect, render

        return render(collect(args.address))
    if args.group == "serve":
        return serve_command(args)
    if args.group == "keys":
        return key_command(args)
    if args.group == "audit":
        return audit_command(args)
    if args.group == "score":
        from maas.scoring import score

        keep = tuple(c.strip() for c in args.keep.split(",") if c.strip())
        return score(args.registry or default_registry_root(), args.model, args.input, args.output,
                     args.actors, args.batch_size, keep, args.format, args.address).line()
    if args.action == "keygen" and args.master:
        from maas.artifacts.encryption import generate_master_key

        path = generate_master_key(Path(args.directory) / "master.key")
        return (f"master key: {path} (publishers and serving nodes read it from "
                "$MAAS_MASTER_KEY_FILE; publishing then encrypts every version's files)")
    if args.action == "keygen":
        from maas.artifacts.signing import generate_keys

        private, public = generate_keys(args.directory)
        return (f"private key: {private} (keep it off the registry; publishers read it from "
                f"$MAAS_SIGNING_KEY)\npublic key:  {public} (serving: verify_key or $MAAS_VERIFY_KEY)")
    registry = Registry(args.registry or default_registry_root())
    if args.action == "list":
        return list_models(registry)
    if args.action == "verify":
        return verify_version(registry, args.name, args.version, args.key)
    entry = registry.get(args.name, args.version)
    return json.dumps(entry.metadata, indent=2) if args.json else show_version(entry)


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


def audit_command(args: argparse.Namespace) -> str:
    from maas import audit
    from maas.errors import IntegrityError

    root = args.registry or default_registry_root()
    if args.action == "verify":
        checked, problems = audit.verify(root)
        if problems:
            raise IntegrityError(f"the audit trail at {audit.audit_root(root)} was tampered with:\n  "
                                 + "\n  ".join(problems))
        return f"audit trail intact: {checked} entries in {audit.audit_root(root)}"
    found = audit.entries(root, args.model, args.since, args.action)
    shown = found[-args.limit:] if args.limit else found
    hidden = {"prev", "hash", "writer", "time", "action"}
    lines = [f"{e.get('time', '')}  {e.get('action', ''):<22} "
             + " ".join(f"{k}={v}" for k, v in e.items() if k not in hidden) for e in shown]
    return "\n".join(lines) or "no entries"


def key_command(args: argparse.Namespace) -> str:
    from maas.serving.keys import KeyFile, keys_path

    store = KeyFile(args.file or keys_path(args.registry or default_registry_root()))
    if args.action == "create":
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        record, key = store.create(models, args.role, args.rate, args.label)
        return (f"created key {record.id} (role {record.role}, models {', '.join(record.models)}"
                f"{f', {record.rate_per_s:g} requests/s' if record.rate_per_s else ''}) in {store.path}\n"
                f"{key}\nshown once: it is stored only as a hash")
    if args.action == "revoke":
        return f"revoked key {store.revoke(args.id).id}; replicas refuse it from their next check"
    rows = [f"{'ID':<10} {'ROLE':<8} {'RATE/S':>7}  {'STATE':<8} {'CREATED':<26} MODELS  LABEL"]
    rows += [f"{k.id:<10} {k.role:<8} {k.rate_per_s or '-'!s:>7}  "
             f"{'revoked' if k.revoked_at else 'active':<8} {k.created_at:<26} "
             f"{','.join(k.models)}  {k.label}" for k in store.read()]
    if len(rows) == 1:
        return f"no keys in {store.path} (predict is open unless api_keys are set)"
    return "\n".join(rows)


def verify_version(registry: Registry, name: str, version: str, key: str | None) -> str:
    """Signature (when a key is given or configured) and content hash, as serving checks them."""
    from maas.artifacts.signing import Verifier
    from maas.errors import ConfigError

    verifier = Verifier.from_setting(key)
    entry = registry.get(name, version)
    files = registry.read_verified(entry, verifier)
    if verifier is None:
        raise ConfigError(f"{name} version {entry.version}: its {len(files)} files match its content "
                          "hash, but no key was given to check its signature: pass --key or set "
                          "$MAAS_VERIFY_KEY")
    return (f"{name} version {entry.version}: signed by key {verifier.key_id}; its {len(files)} files "
            "match the signed content hash")


def show_version(entry: ModelVersion) -> str:
    """A version for a person: metrics as a table, the confusion matrix as a grid, lineage."""
    meta = entry.metadata
    lines = [f"{entry.name} version {entry.version}  created {meta.get('created_at', '-')}  "
             f"format {meta.get('format', '-')}  run {meta.get('run_id', '-')}", "", "metrics"]
    metrics = meta.get("metrics") or {}
    width = max((len(k) for k in metrics), default=0)
    lines += [f"  {key:<{width}}  {_number(value)}" for key, value in sorted(metrics.items())] or ["  none"]
    for section in ("training", "lineage", "sweep"):
        if isinstance(meta.get(section), dict):
            lines += ["", section] + [f"  {k}: {_number(v)}" for k, v in meta[section].items()]
    matrix = meta.get("confusion_matrix")
    if matrix:
        classes = (meta.get("schema") or {}).get("classes") or list(range(len(matrix)))
        lines += ["", "confusion matrix (rows: true class, columns: predicted)", *_grid(matrix, classes)]
    lines += [*_saved_model_lines(meta), "", f"uri: {entry.uri}", "all metadata: add --json"]
    return "\n".join(lines)


def _saved_model_lines(meta: dict[str, Any]) -> list[str]:
    """Where TensorFlow Serving finds this version's SavedModel, and whose model it is."""
    saved = meta.get("saved_model")
    if not isinstance(saved, dict):
        return ["", "saved model: none (published before versions carried one)"]
    inputs = ", ".join(f"{name} {spec.get('dtype')} {spec.get('shape')}"
                       for name, spec in (saved.get("inputs") or {}).items())
    whose = (f"its parent version {saved.get('parent_version')}'s float model"
             if saved.get("of") == "parent" else "this version's model")
    encrypted = "; encrypted at rest: TF Serving cannot read it in place" if "encryption" in meta else ""
    return ["", "saved model (TensorFlow Serving layout)",
            f"  dir {saved.get('dir')}  signature {saved.get('signature')}  method {saved.get('method')}",
            f"  inputs {inputs}", f"  {whose}{encrypted}"]


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _grid(matrix: list[list[int]], classes: list[Any]) -> list[str]:
    labels = [str(c) for c in classes]
    width = max(len(x) for x in [*labels, *(str(v) for row in matrix for v in row)]) + 1
    header = " " * width + " " + "".join(f"{c:>{width}}" for c in labels)
    rows = [f"{label:>{width}} " + "".join(f"{v:>{width}}" for v in row)
            for label, row in zip(labels, matrix, strict=False)]
    return [header, *rows]


def serve_command(args: argparse.Namespace) -> str:
    if args.action == "schema":
        from maas.serving.settings import settings_json_schema

        return json.dumps(settings_json_schema(), indent=2)
    from maas.servectl import apply, version_changes
    from maas.serving.settings import ModelSettings

    if args.action == "rollout":
        return rollout_command(args)

    def edit(current: ModelSettings) -> dict[str, Any]:
        return version_changes(args.versions, args.label, args.default, args.poll, current)

    settings = apply(args.address, args.app, args.model, args.action, getattr(args, "to", None),
                     args.registry, edit if args.action == "versions" else None)
    verb = "current" if args.action == "show" else "deployed"
    return f"{args.model} ({verb} user_config): {json.dumps(settings)}"


def rollout_command(args: argparse.Namespace) -> str:
    from maas.servectl import abort_changes, apply, render_rollout, rollout_status
    from maas.serving.settings import ModelSettings

    if args.abort:
        def edit(current: ModelSettings) -> dict[str, Any]:
            return abort_changes(current, args.model)

        settings = apply(args.address, args.app, args.model, "rollout-abort", None, args.registry, edit)
        return (f"{args.model}: rollout aborted, canary weight 0 (deployed user_config): "
                f"{json.dumps(settings)}")
    report = rollout_status(args.address, args.app, args.model, args.registry)
    return json.dumps(report, indent=2) if args.json else render_rollout(report)
