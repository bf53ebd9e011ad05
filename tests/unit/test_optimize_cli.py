"""``python -m optimize`` end to end on a tiny registered model in a temporary registry, and the
errors a user can cause: a message and an exit code, never a traceback. No Ray."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from maas.config import DataConfig, ModelConfig, TrainJobConfig
from maas.errors import IntegrityError
from maas.optimize.runtime import load_onnx_session
from maas.registry import Registry
from optimize.cli import main
from tests.conftest import REPO
from tests.unit.test_optimize import publish_digits, publish_trained

RECIPE = str(REPO / "configs/optimize/default.yaml")
FAST = ["--set", "evaluation.repeats=3", "--set", "evaluation.warmup=1"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("optimize-cli") / "registry")
    publish_digits(root, epochs=2)
    return root


def test_default_recipe_end_to_end(root: str, tmp_path: Path, capsys) -> None:
    report = tmp_path / "tradeoff.png"
    assert main(["--model", "digits_mlp:1", "--recipe", RECIPE, "--registry", root, *FAST,
                 "--report", str(report)]) == 0
    assert report.read_bytes().startswith(b"\x89PNG")
    out = capsys.readouterr().out
    assert "keras (v1)" in out and "savedmodel" in out and "ms@64" in out
    assert 'RESULT {"model": "digits_mlp", "parent_version": 1, "published": {"onnx": 2, ' in out
    registry = Registry(root)
    assert registry.versions("digits_mlp") == [1, 2, 3, 4]
    kinds = [registry.get("digits_mlp", v).metadata["artifact"]["format"] for v in (2, 3, 4)]
    assert kinds == ["onnx", "onnx", "savedmodel"]
    assert all(registry.get("digits_mlp", v).metadata["parent_version"] == 1 for v in (2, 3, 4))
    # what serving will do with it: verified bytes -> an ONNX Runtime session, no TensorFlow needed
    entry = registry.get("digits_mlp", 2)
    files = registry.read_verified(entry)
    session = load_onnx_session(files[entry.metadata["artifact"]["file"]], threads=2)
    assert session.predict(np.zeros((3, 8, 8), np.float32)).shape == (3, 10)
    # an ONNX variant is not optimised again: its Keras parent is
    assert main(["--model", "digits_mlp:2", "--recipe", RECIPE, "--registry", root, *FAST]) == 2
    assert "optimise the Keras version it came from (parent_version 1)" in capsys.readouterr().err


def test_text_model_is_refused_with_a_message_and_exit_code(tmp_path: Path, capsys) -> None:
    root = str(tmp_path / "registry")
    cfg = TrainJobConfig(data=DataConfig(source="reviews"),
                         model=ModelConfig(type="text", vocab_size=50, sequence_length=8, conv_filters=[4],
                                           hidden_units=[4]))
    publish_trained(root, cfg, "reviews_text", epochs=0)
    code = main(["--model", "reviews_text", "--recipe", RECIPE, "--registry", root, *FAST,
                 "--set", "variants=[{kind: onnx}]"])
    captured = capsys.readouterr()
    assert code == 2
    assert "TextVectorization" in captured.err and "savedmodel" in captured.err
    assert "Traceback" not in captured.err and Registry(root).versions("reviews_text") == [1]


@pytest.mark.parametrize("args, exit_code, message", [
    (["--model", "nope"], 1, "model 'nope' is not in the registry"),
    (["--model", "digits_mlp:9"], 1, "has no version 9"),
    (["--model", "digits_mlp", "--set", "variants=[{kind: distilled}]"], 2, "invalid configuration"),
    (["--model", ":3"], 2, "is not NAME or NAME:VERSION"),
])
def test_user_errors_are_messages_with_exit_codes(root: str, capsys, args, exit_code, message) -> None:
    assert main([*args, "--recipe", RECIPE, "--registry", root]) == exit_code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_module_entry_point_runs_without_ray_or_tensorflow_for_a_check(root: str) -> None:
    done = subprocess.run([sys.executable, "-m", "optimize", "--model", "digits_mlp:1", "--recipe", RECIPE,
                           "--registry", root, "--check"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "variants onnx, onnx-int8, savedmodel" in done.stdout
    missing = subprocess.run([sys.executable, "-m", "optimize", "--model", "nope", "--recipe", RECIPE,
                              "--registry", root], cwd=REPO, capture_output=True, text=True)
    assert missing.returncode == 1 and missing.stderr.startswith("error: model 'nope'")


def test_bad_onnx_bytes_are_an_integrity_error() -> None:
    with pytest.raises(IntegrityError, match="ONNX Runtime cannot load it"):
        load_onnx_session(b"not a model", what="model 'm' version 3")


def test_optimize_imports_no_other_entry_point() -> None:
    imported = set()
    for path in (REPO / "optimize").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    assert not imported & {"train", "tune", "serve"}


def test_importing_the_stage_starts_nothing_heavy() -> None:
    code = ("import sys, optimize.cli, maas.optimize.pipeline, maas.optimize.recipe, maas.optimize.runtime\n"
            "heavy = ('tensorflow', 'tf_keras', 'ray', 'onnxruntime', 'tf2onnx')\n"
            "assert not [m for m in heavy if m in sys.modules]")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_signed_and_encrypted_parent_gives_a_signed_encrypted_variant(tmp_path: Path, monkeypatch,
                                                                      capsys) -> None:
    from maas.artifacts.encryption import MasterKey, decrypt_files, generate_master_key
    from maas.artifacts.signing import Verifier, generate_keys

    private, public = generate_keys(tmp_path / "keys")
    monkeypatch.setenv("MAAS_SIGNING_KEY", str(private))
    monkeypatch.setenv("MAAS_VERIFY_KEY", str(public))
    monkeypatch.setenv("MAAS_MASTER_KEY_FILE", str(generate_master_key(tmp_path / "keys" / "master.key")))
    root = str(tmp_path / "registry")
    publish_digits(root, epochs=1)
    assert main(["--model", "digits_mlp", "--recipe", RECIPE, "--registry", root, *FAST,
                 "--set", "variants=[{kind: onnx}]"]) == 0
    registry = Registry(root)
    entry = registry.get("digits_mlp", 2)
    assert "encryption" in entry.metadata and entry.metadata["parent_version"] == 1
    files = registry.read_verified(entry, Verifier.load(str(public)))  # signature checked first
    files = decrypt_files(files, entry.metadata["encryption"], MasterKey.from_env(), "v2")
    assert load_onnx_session(files["model.onnx"]).predict(np.zeros((1, 8, 8), np.float32)).shape == (1, 10)
    # a parent that fails its signature check is not read at all
    _, stranger = generate_keys(tmp_path / "other")
    monkeypatch.setenv("MAAS_VERIFY_KEY", str(stranger))
    capsys.readouterr()
    assert main(["--model", "digits_mlp:1", "--recipe", RECIPE, "--registry", root, "--check"]) == 0
    assert main(["--model", "digits_mlp:1", "--recipe", RECIPE, "--registry", root, *FAST]) == 1
    assert "not by the trusted key" in capsys.readouterr().err
