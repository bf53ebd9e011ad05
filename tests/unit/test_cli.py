import subprocess
import sys
from pathlib import Path

from maas.cli import main as maas_main
from maas.registry import Registry
from tests.conftest import REPO
from train.cli import main as train_main


def test_train_check_validates_without_ray(capsys) -> None:
    assert train_main(["--config", "configs/train/digits_mlp.yaml", "--check"]) == 0
    assert "2 workers x batch 32" in capsys.readouterr().out


def test_train_bad_config_is_a_message_not_a_traceback(capsys) -> None:
    code = train_main(["--config", "configs/train/digits_mlp.yaml", "--set", "training.epochz=3"])
    err = capsys.readouterr().err
    assert code == 2
    assert "training.epochz: unknown key" in err and "Traceback" not in err


def test_train_bad_data_file_is_a_message(tmp_path: Path, capsys) -> None:
    code = train_main(["--config", "configs/train/digits_mlp.yaml", "--set", "data.source=csv",
                       "--set", f"data.path={tmp_path}/missing.csv", "--check"])
    assert code == 2
    assert "missing.csv' does not exist" in capsys.readouterr().err


def test_models_list_and_show(tmp_path: Path, registry_root: str, capsys) -> None:
    source = tmp_path / "m"
    source.mkdir()
    (source / "model.keras").write_bytes(b"x")
    Registry(registry_root).publish("digits_mlp", source, {"metrics": {"test_accuracy": 0.97}})
    assert maas_main(["--registry", registry_root, "models", "list"]) == 0
    listing = capsys.readouterr().out
    assert "digits_mlp" in listing and "0.9700" in listing
    assert maas_main(["--registry", registry_root, "models", "show", "digits_mlp", "--json"]) == 0
    assert '"test_accuracy": 0.97' in capsys.readouterr().out
    assert maas_main(["--registry", registry_root, "models", "show", "nope"]) == 1
    assert "'nope' is not in the registry" in capsys.readouterr().err


def test_module_entry_points_run() -> None:
    out = subprocess.run([sys.executable, "-m", "train", "--help"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    assert "--config" in out


def test_models_show_prints_metrics_as_a_table_and_the_matrix_as_a_grid(
        tmp_path: Path, registry_root: str, capsys) -> None:
    source = tmp_path / "m"
    source.mkdir()
    (source / "model.keras").write_bytes(b"x")
    Registry(registry_root).publish("digits_mlp", source, {
        "metrics": {"test_accuracy": 0.97, "test_loss": 0.1},
        "confusion_matrix": [[12, 1], [0, 10]], "schema": {"classes": ["cat", "dog"]}})
    assert maas_main(["--registry", registry_root, "models", "show", "digits_mlp"]) == 0
    out = capsys.readouterr().out
    assert "test_accuracy  0.9700" in out and "test_loss      0.1000" in out
    grid = out[out.index("confusion matrix"):].splitlines()
    assert grid[1].split() == ["cat", "dog"]
    assert grid[2].split() == ["cat", "12", "1"] and grid[3].split() == ["dog", "0", "10"]


def test_serve_schema_documents_every_field(capsys) -> None:
    import json

    assert maas_main(["serve", "schema"]) == 0
    schemas = json.loads(capsys.readouterr().out)
    settings = schemas["user_config of a model deployment"]
    assert "max_pending_requests" in settings["properties"]
    for schema in schemas.values():
        for definition in [schema, *schema.get("$defs", {}).values()]:
            for name, field in definition.get("properties", {}).items():
                assert field.get("description"), f"{definition.get('title')}.{name} has no description"
