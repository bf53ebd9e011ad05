"""Loading a model cannot run code from it: a `.keras` archive crafted the way an attacker with
write access to the registry would craft it (a Lambda layer naming an importable module) makes
plain `load_model(safe_mode=True)` import and call that module; ours refuses it before Keras
sees it, and a server already serving keeps serving."""

import asyncio
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from maas.errors import IntegrityError
from maas.registry import Registry
from tests.conftest import REPO

MARKER_MODULE = "maas_marker_payload"
SCHEMA = {"input_shape": [4], "classes": [0, 1], "dtype": "float32"}


def _good_archive(path: Path) -> dict[str, bytes]:
    from maas.tfkeras import keras, save_model

    k = keras()
    inputs = k.Input(shape=(4,), name="inputs")
    model = k.Model(inputs, k.layers.Dense(2, activation="softmax", name="probabilities")(inputs))
    save_model(model, str(path))
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _write_archive(path: Path, files: dict[str, bytes], config: dict[str, Any]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, json.dumps(config) if name == "config.json" else content)
    return path


def _lambda_attack(config: dict[str, Any]) -> dict[str, Any]:
    """Insert a Lambda layer whose function is `maas_marker_payload.payload`."""
    layers = config["config"]["layers"]
    evil = {"module": "keras.layers", "class_name": "Lambda", "registered_name": None, "name": "evil",
            "inbound_nodes": [[["inputs", 0, 0, {}]]],
            "config": {"name": "evil", "trainable": True, "dtype": "float32", "arguments": {},
                       "function": {"module": MARKER_MODULE, "class_name": "function",
                                    "config": "payload", "registered_name": "function"},
                       "function_type": "function", "module": MARKER_MODULE, "output_shape": None,
                       "output_shape_type": "raw", "output_shape_module": None}}
    layers[-1]["inbound_nodes"] = [[["evil", 0, 0, {}]]]
    layers.insert(1, evil)
    return config


@pytest.fixture
def attack(tmp_path: Path) -> dict[str, Path]:
    """A genuine archive, the crafted one, and an importable marker module that leaves a file
    behind when it is imported or called."""
    marker = tmp_path / "MARKER"
    (tmp_path / f"{MARKER_MODULE}.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('imported')\n"
        "def payload(x):\n"
        f"    pathlib.Path({str(marker)!r}).write_text('called')\n"
        "    return x\n")
    files = _good_archive(tmp_path / "good.keras")
    config = json.loads(files["config.json"])
    crafted = _write_archive(tmp_path / "crafted.keras", files, _lambda_attack(config))
    return {"good": tmp_path / "good.keras", "crafted": crafted, "marker": marker, "dir": tmp_path}


def _publish(registry: Registry, tmp_path: Path, archive: Path, name: str = "m") -> int:
    source = tmp_path / f"publish-{archive.stem}"
    source.mkdir()
    (source / "model.keras").write_bytes(archive.read_bytes())
    return registry.publish(name, source, {"schema": SCHEMA, "format": "model.keras"}).version


def test_the_attack_is_real_plain_keras_safe_mode_runs_the_marker(attack) -> None:
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from maas.tfkeras import keras; "
            "keras().models.load_model(sys.argv[2], safe_mode=True, compile=False)")
    subprocess.run([sys.executable, "-c", code, str(attack["dir"]), str(attack["crafted"])],
                   cwd=REPO, check=True, capture_output=True)
    assert attack["marker"].read_text() == "called"


def test_our_loader_refuses_the_crafted_version_and_never_imports_the_marker(
        attack, tmp_path: Path, monkeypatch) -> None:
    from maas.serving.model import LoadedModel

    monkeypatch.syspath_prepend(str(attack["dir"]))  # the module is importable, as on a real node
    registry = Registry(str(tmp_path / "registry"))
    version = _publish(registry, tmp_path, attack["crafted"])
    with pytest.raises(IntegrityError, match=r"refused before loading.*Lambda.*not an allowed"):
        LoadedModel.from_registry(registry.root_uri, "m", version)
    assert not attack["marker"].exists() and MARKER_MODULE not in sys.modules


def test_a_server_keeps_serving_its_version_when_the_next_one_is_crafted(attack, tmp_path: Path,
                                                                        monkeypatch) -> None:
    from maas.serving.host import ModelHost
    from tests.unit.test_serve_hosting import direct_batcher

    monkeypatch.syspath_prepend(str(attack["dir"]))
    registry = Registry(str(tmp_path / "registry"))
    _publish(registry, tmp_path, attack["good"])
    host = ModelHost("m", registry.root_uri, 16, batcher=direct_batcher)

    async def scenario() -> None:
        await host.configure({})
        assert (await host.infer([[0.0] * 4]))["version"] == 1
        _publish(registry, tmp_path, attack["crafted"])
        await host.sync()  # what a registry poll or `maas serve refresh` does
        status = await host.status()
        assert status["served_versions"] == [1] and "refused before loading" in status["load_error"]
        reply = await host.infer([[0.0] * 4])
        assert reply["version"] == 1 and np.asarray(reply["outputs"]).shape == (1, 2)

    asyncio.run(scenario())
    assert not attack["marker"].exists() and MARKER_MODULE not in sys.modules


@pytest.mark.parametrize(("tamper", "message"), [
    (lambda c: c["config"]["layers"][-1]["config"].update(
        activation={"module": "os", "class_name": "function", "config": "system",
                    "registered_name": "function"}), "os.function"),
    (lambda c: c["config"]["layers"][-1]["config"].update(activation="os.system"), "not a built-in"),
    (lambda c: c["config"]["layers"][-1].update(registered_name="Custom>Dense"), "custom object"),
    (lambda c: c["config"]["layers"][-1].update(module="my_package.layers"), "not an allowed"),
])
def test_other_ways_of_naming_code_are_refused(attack, tamper, message) -> None:
    from maas.artifacts.keras_safety import check_keras_archive

    with zipfile.ZipFile(attack["good"]) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(files["config.json"])
    tamper(config)
    crafted = _write_archive(attack["dir"] / "other.keras", files, config)
    with pytest.raises(IntegrityError, match=message):
        check_keras_archive(crafted.read_bytes(), "model 'm' version 2")


def test_hdf5_and_stray_files_are_refused(attack) -> None:
    from maas.artifacts.keras_safety import check_format, check_keras_archive

    with pytest.raises(IntegrityError, match="HDF5 ignores safe mode"):
        check_format("model.h5", "model 'm' version 1")
    with zipfile.ZipFile(attack["good"]) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    files["payload.py"] = b"print('hi')"
    stray = _write_archive(attack["dir"] / "stray.keras", files, json.loads(files["config.json"]))
    with pytest.raises(IntegrityError, match="files a model does not need"):
        check_keras_archive(stray.read_bytes(), "model 'm' version 1")


def test_every_model_our_builders_make_passes_the_check(tmp_path: Path) -> None:
    from maas.artifacts.keras_safety import check_keras_archive
    from maas.config import ModelConfig
    from maas.data import DataSchema
    from maas.models import build_model
    from maas.tfkeras import save_model

    image = DataSchema((8, 8), list(range(10)))
    text = DataSchema((), ["neg", "pos"], dtype="string")
    cases = [(ModelConfig(type="mlp"), image), (ModelConfig(type="cnn"), image),
             (ModelConfig(type="text", text_encoder="conv"), text),
             (ModelConfig(type="text", text_encoder="lstm"), text)]
    for i, (cfg, schema) in enumerate(cases):
        numeric = not schema.is_text
        model = build_model(cfg, schema, np.zeros((8, 8)) if numeric else None,
                            np.ones((8, 8)) if numeric else None,
                            None if numeric else np.array(["a good film", "a bad film"]))
        path = tmp_path / f"{i}.keras"
        save_model(model, str(path))
        check_keras_archive(path.read_bytes(), f"{cfg.type} model")
