from pathlib import Path

import pytest
from pydantic import ValidationError

from maas.config import (
    ConfigError,
    TrainJobConfig,
    apply_overrides,
    load_config,
    parse_override,
    validate_config,
)
from tests.conftest import REPO

TRAIN_CONFIGS = sorted((REPO / "configs" / "train").glob("*.yaml"))


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_train_config_validates(path: Path) -> None:
    paths = [REPO / "configs/train/digits_mlp.yaml", path] if path.name == "smoke.yaml" else [path]
    assert isinstance(load_config(paths), TrainJobConfig)


def test_overrides_keep_yaml_types() -> None:
    cfg = load_config(REPO / "configs/train/digits_mlp.yaml",
                      ["training.epochs=3", "model.hidden_units=[16, 8]", "scaling.use_gpu=false"])
    assert cfg.training.epochs == 3
    assert cfg.model.hidden_units == [16, 8]
    assert cfg.scaling.use_gpu is False


def test_later_files_overlay_earlier_ones() -> None:
    cfg = load_config([REPO / "configs/train/digits_mlp.yaml", REPO / "configs/train/smoke.yaml"])
    assert cfg.training.epochs == 2
    assert cfg.model.hidden_units == [32]
    assert cfg.optimizer.learning_rate == 0.002  # untouched by the overlay


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"model\.hiden_units: unknown key"):
        load_config(REPO / "configs/train/digits_mlp.yaml", ["model.hiden_units=[4]"])


def test_bad_value_names_field_and_value() -> None:
    with pytest.raises(ConfigError, match=r"training\.epochs.*(got 0)"):
        load_config(REPO / "configs/train/digits_mlp.yaml", ["training.epochs=0"])


@pytest.mark.parametrize("override, message", [
    ("model.hidden_units=[0]", "positive"),
    ("model.type=transformer", "model.type"),
    ("optimizer.name=adagrad", "optimizer.name"),
    ("data.source=csv", "needs data.path"),
    ("data.val_fraction=0.7", "val_fraction"),
    ("registry.model_name=../evil", "model_name"),
])
def test_invalid_values_are_refused(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(REPO / "configs/train/digits_mlp.yaml", [override])


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("configs/train/nope.yaml")


def test_non_mapping_yaml(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(path)


@pytest.mark.parametrize("bad", ["noequals", "=5", "a.b=[unclosed"])
def test_malformed_overrides(bad: str) -> None:
    with pytest.raises(ConfigError):
        apply_overrides({}, [bad])


def test_parse_override_splits_path() -> None:
    assert parse_override("a.b.c=1.5") == (["a", "b", "c"], 1.5)


def test_config_is_frozen() -> None:
    cfg = validate_config(TrainJobConfig, {})
    with pytest.raises(ValidationError, match="frozen"):
        cfg.training.epochs = 5  # type: ignore[misc]


def test_registry_default_follows_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAAS_REGISTRY", "/srv/models")
    assert validate_config(TrainJobConfig, {}).registry.root == "/srv/models"
    monkeypatch.delenv("MAAS_REGISTRY")
    assert validate_config(TrainJobConfig, {}).registry.root.endswith(".maas/registry")


def test_a_relative_data_path_is_made_absolute_where_it_exists(tmp_path: Path, monkeypatch) -> None:
    """Ray Train workers run in another working directory: they get the driver's absolute path."""
    (tmp_path / "t.csv").write_text("a,label\n1,0\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(REPO / "configs/train/digits_mlp.yaml", ["data.source=csv", "data.path=t.csv"]
                       ).data.path == str((tmp_path / "t.csv").resolve())
    assert load_config(REPO / "configs/train/digits_mlp.yaml", ["data.source=csv", "data.path=no.csv"]
                       ).data.path == "no.csv"  # the data loader names the missing file as given
