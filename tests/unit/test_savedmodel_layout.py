"""Every registered version carries a SavedModel in the TensorFlow Serving layout (issue 12):
``saved_model.pb`` and ``variables/`` at the top of ``<root>/<name>/<version>/``, a
``serving_default`` signature with named inputs and method ``tensorflow/serving/predict``. Proved
without ``tensorflow_model_server`` (not installable here): ``saved_model_cli show`` on a version
published the normal way (``maas.training.publish_model``, what training and tuning call), then a
fresh process loads the signature and answers a ``tensorflow_serving.apis`` PredictRequest the way
TF Serving does, matching Keras. Also: hash, signature, encryption and optimised versions. No Ray."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from maas.config import DataConfig, ModelConfig, RegistrySection, TrainJobConfig
from maas.data import load_dataset
from maas.errors import IntegrityError
from maas.registry import Registry
from maas.training import MODEL_FILE, PublishRequest, publish_model
from tests.conftest import REPO

SAVED_MODEL_FILES = {"saved_model.pb", "fingerprint.pb", "variables/variables.index",
                     "variables/variables.data-00000-of-00001"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The digits MLP trained for a few epochs in-process, saved as a training checkpoint is."""
    from maas.models import build_model, compile_model
    from maas.tfkeras import save_model

    cfg = TrainJobConfig(data=DataConfig(source="digits"), model=ModelConfig(hidden_units=[32]))
    splits = load_dataset(cfg.data)
    model = build_model(cfg.model, splits.schema, splits.x_train.mean(axis=0), splits.x_train.var(axis=0) + 1)
    compile_model(model, cfg.optimizer)
    history = model.fit(splits.x_train, splits.y_train, epochs=3, batch_size=64, verbose=0).history
    checkpoint = tmp_path_factory.mktemp("checkpoint")
    save_model(model, str(checkpoint / MODEL_FILE))
    epochs = [{"epoch": i + 1, **{k: float(v[i]) for k, v in history.items()}} for i in range(3)]
    return cfg, splits, checkpoint, epochs


def publish(trained, root: str):
    """A version registered exactly the way a training run (or a sweep's winner) registers it."""
    cfg, splits, checkpoint, epochs = trained
    cfg = cfg.model_copy(update={"registry": RegistrySection(root=root, model_name="digits_mlp")})
    return publish_model(PublishRequest(
        cfg=cfg, splits=splits, run_name="unit-run", checkpoint_dir=checkpoint,
        checkpoint_uri=str(checkpoint), metrics={"test_accuracy": 0.9}, history=epochs, confusion=None))


@pytest.fixture(scope="module")
def published(trained, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("layout") / "registry")
    return root, publish(trained, root)


def keras_outputs(directory: Path, rows: np.ndarray) -> np.ndarray:
    from maas.artifacts.keras_loader import load_keras_bytes

    model = load_keras_bytes((directory / MODEL_FILE).read_bytes(), MODEL_FILE, "test")
    return np.asarray(model(rows))


def test_a_published_version_carries_the_savedmodel_beside_model_keras(published) -> None:
    root, version = published
    directory = Path(root, "digits_mlp", str(version.version))
    assert (directory / "saved_model.pb").is_file() and (directory / "variables").is_dir()
    assert (directory / MODEL_FILE).is_file()  # our own serving's file stays
    assert SAVED_MODEL_FILES | {MODEL_FILE} <= set(version.metadata["files"])  # hashed like the rest
    saved = version.metadata["saved_model"]
    assert {k: saved[k] for k in ("dir", "tags", "signature", "method", "input", "of")} == {
        "dir": ".", "tags": ["serve"], "signature": "serving_default",
        "method": "tensorflow/serving/predict", "input": "inputs", "of": "this version"}
    assert saved["inputs"] == {"inputs": {"dtype": "float32", "shape": [-1, 8, 8]}}
    assert saved["outputs"] == {saved["output"]: {"dtype": "float32", "shape": [-1, 10]}}
    assert set(saved["files"]) == SAVED_MODEL_FILES and saved["max_abs_diff"] <= 1e-4
    assert version.metadata["format"] == MODEL_FILE  # our serving still loads the Keras file


def test_saved_model_cli_shows_the_signature_tf_serving_needs(published) -> None:
    root, version = published
    cli = Path(sys.executable).parent / "saved_model_cli"
    shown = subprocess.run([str(cli), "show", "--dir", str(Path(root, "digits_mlp", str(version.version))),
                            "--tag_set", "serve", "--signature_def", "serving_default"],
                           capture_output=True, text=True, check=True).stdout
    inputs, outputs = shown.split("The given SavedModel SignatureDef contains the following output(s):")
    assert re.search(r"inputs\['inputs'\] tensor_info:\s+dtype: DT_FLOAT\s+shape: \(-1, 8, 8\)", inputs)
    output = version.metadata["saved_model"]["output"]
    assert re.search(rf"outputs\['{output}'\] tensor_info:\s+dtype: DT_FLOAT\s+shape: \(-1, 10\)", outputs)
    assert "Method name is: tensorflow/serving/predict" in outputs


def test_a_fresh_process_answers_a_tf_serving_predict_request_like_keras(published) -> None:
    root, version = published
    directory = Path(root, "digits_mlp", str(version.version))
    rows = load_dataset(DataConfig(source="digits")).x_test[:16].astype(np.float32)
    outputs = answer_predict_request(directory, rows)
    np.testing.assert_allclose(outputs[version.metadata["saved_model"]["output"]],
                               keras_outputs(directory, rows), atol=1e-5)


def answer_predict_request(directory: Path, rows: np.ndarray, model_name: str = "digits_mlp",
                           input_name: str = "inputs") -> dict[str, np.ndarray]:
    """Build a TF Serving PredictRequest (``tf.make_tensor_proto``), have a fresh process answer it
    from ``directory`` as tensorflow_model_server would, and return the PredictResponse's outputs."""
    from tensorflow_serving.apis import predict_pb2  # imports TensorFlow: not at collection time

    from maas.tfkeras import tensorflow

    tf = tensorflow()
    request = predict_pb2.PredictRequest()  # what a TensorFlow Serving gRPC client sends
    request.model_spec.name, request.model_spec.signature_name = model_name, "serving_default"
    request.inputs[input_name].CopyFrom(tf.make_tensor_proto(rows))
    done = subprocess.run([sys.executable, "-c", ANSWER_REQUEST, str(directory),
                           request.SerializeToString().hex()], capture_output=True, text=True, check=True)
    response = predict_pb2.PredictResponse.FromString(bytes.fromhex(done.stdout.splitlines()[-1]))
    assert response.model_spec.signature_name == "serving_default"
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


# TF Serving's predict: the signature named in the request (default serving_default) must have
# method tensorflow/serving/predict; each request input alias must be one of the signature's
# inputs and every signature input must be given; the tensors are passed by name, cast to the
# signature's dtype; every output comes back as a TensorProto under its alias.
ANSWER_REQUEST = """
import sys
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
directory, request = sys.argv[1], predict_pb2.PredictRequest.FromString(bytes.fromhex(sys.argv[2]))
name = request.model_spec.signature_name or 'serving_default'
signature = tf.saved_model.load(directory, tags=['serve']).signatures[name]
specs = signature.structured_input_signature[1]
unknown, missing = set(request.inputs) - set(specs), set(specs) - set(request.inputs)
assert not unknown and not missing, (unknown, missing)
outputs = signature(**{key: tf.constant(tf.make_ndarray(request.inputs[key]), dtype=spec.dtype)
                       for key, spec in specs.items()})
response = predict_pb2.PredictResponse()
response.model_spec.CopyFrom(request.model_spec)
response.model_spec.signature_name = name
for key, value in outputs.items():
    response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
print(response.SerializeToString().hex())
"""


def test_a_text_model_takes_strings_with_its_tokeniser_inside(tmp_path) -> None:
    from maas.config import load_config
    from maas.models import build_model
    from maas.tfkeras import save_model

    cfg = load_config(REPO / "configs/train/reviews_text.yaml", [f"registry.root={tmp_path / 'registry'}"])
    splits = load_dataset(cfg.data)
    model = build_model(cfg.model, splits.schema, None, None, splits.x_train)
    save_model(model, str(tmp_path / MODEL_FILE))
    version = publish_model(PublishRequest(
        cfg=cfg, splits=splits, run_name="text", checkpoint_dir=tmp_path, checkpoint_uri=str(tmp_path),
        metrics={}, history=[{"epoch": 1, "loss": 0.7}], confusion=None))
    assert version.metadata["saved_model"]["inputs"] == {"inputs": {"dtype": "string", "shape": [-1]}}
    reviews = np.array([str(text).encode() for text in splits.x_test[:4]], dtype=object)
    (output,) = answer_predict_request(Path(version.uri), reviews, cfg.registry.model_name).values()
    np.testing.assert_allclose(output, keras_outputs(Path(version.uri), splits.x_test[:4]), atol=1e-5)


def test_the_savedmodel_is_under_the_content_hash_and_the_signature(trained, tmp_path, monkeypatch) -> None:
    from maas.artifacts.signing import Verifier, generate_keys

    private, public = generate_keys(tmp_path / "keys")
    monkeypatch.setenv("MAAS_SIGNING_KEY", str(private))
    root = str(tmp_path / "registry")
    version = publish(trained, root)
    registry = Registry(root)
    files = registry.read_verified(version, Verifier.load(str(public)))
    assert SAVED_MODEL_FILES <= set(files)
    variables = Path(version.uri, "variables", "variables.data-00000-of-00001")
    content = variables.read_bytes()
    variables.write_bytes(content[:-1] + bytes([content[-1] ^ 1]))  # one bit of a weight flipped
    with pytest.raises(IntegrityError, match="fails its integrity check"):
        registry.read_verified(registry.get("digits_mlp", version.version), Verifier.load(str(public)))


def test_an_encrypted_version_carries_its_savedmodel_encrypted(trained, tmp_path, monkeypatch) -> None:
    """Encryption at rest covers the SavedModel too: TF Serving cannot read it in place, and
    ``write_plain_copy`` gives a private TF Serving base path a verified, decrypted copy."""
    from maas.artifacts.encryption import generate_master_key
    from maas.artifacts.savedmodel import write_plain_copy
    from maas.cli import show_version

    monkeypatch.setenv("MAAS_MASTER_KEY_FILE", str(generate_master_key(tmp_path / "master.key")))
    root = str(tmp_path / "registry")
    version = publish(trained, root)
    assert SAVED_MODEL_FILES <= set(version.metadata["encryption"]["files"])
    stored = Path(version.uri, "saved_model.pb").read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - what TF raises for a protobuf it cannot parse varies
        from maas.tfkeras import tensorflow

        tensorflow().saved_model.load(version.uri)
    assert "encrypted at rest" in show_version(version)
    copy = write_plain_copy(Registry(root), "digits_mlp", version.version, tmp_path / "tfserving")
    assert copy == tmp_path / "tfserving" / "digits_mlp" / str(version.version)
    assert {p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()} == SAVED_MODEL_FILES
    assert (copy / "saved_model.pb").read_bytes() != stored and oct(copy.stat().st_mode & 0o777) == "0o700"
    rows = load_dataset(DataConfig(source="digits")).x_test[:8].astype(np.float32)
    (output,) = answer_predict_request(copy, rows).values()
    assert output.shape == (8, 10) and np.allclose(output.sum(axis=1), 1, atol=1e-5)


def test_models_show_says_where_the_savedmodel_is(published, capsys) -> None:
    from maas.cli import main as maas_main

    root, version = published
    argv = ["--registry", root, "models", "show", "digits_mlp", "--version", str(version.version)]
    assert maas_main(argv) == 0
    shown = capsys.readouterr().out
    assert "saved model (TensorFlow Serving layout)" in shown
    assert "signature serving_default  method tensorflow/serving/predict" in shown
    assert "inputs float32 [-1, 8, 8]" in shown and "this version's model" in shown


def test_optimised_versions_carry_their_parents_savedmodel_so_latest_always_loads(trained, tmp_path) -> None:
    """An ONNX (or int8, TFLite) version cannot be a SavedModel of itself: it carries a byte copy
    of its parent's, marked ``of: parent``, so TF Serving's default policy (the highest version)
    never meets a directory without saved_model.pb."""
    from maas.optimize.pipeline import run_recipe
    from maas.optimize.recipe import RecipeConfig

    root = str(tmp_path / "registry")
    parent = publish(trained, root)
    recipe = RecipeConfig.model_validate({"variants": [{"kind": "onnx"}],
                                          "evaluation": {"batch_sizes": [1], "repeats": 2, "warmup": 1}})
    outcome = run_recipe(Registry(root), "digits_mlp", None, recipe, log=lambda *a, **k: None)
    assert not outcome.refusals
    registry = Registry(root)
    onnx = registry.get("digits_mlp")  # the highest version: what TF Serving loads by default
    assert onnx.version == parent.version + 1 and onnx.metadata["artifact"]["runtime"] == "onnxruntime"
    assert set(onnx.metadata["files"]) == {"model.onnx", *SAVED_MODEL_FILES}
    assert onnx.metadata["saved_model"] == {**parent.metadata["saved_model"], "of": "parent",
                                            "parent_version": parent.version}
    for rel in SAVED_MODEL_FILES:  # the parent's bytes, not a re-export
        assert Path(onnx.uri, rel).read_bytes() == Path(parent.uri, rel).read_bytes()
    # tensorflow_model_server --model_base_path=<root>/digits_mlp: numbered directories, highest first
    numbered = sorted(int(p.name) for p in Path(root, "digits_mlp").iterdir() if p.name.isdigit())
    assert all(Path(root, "digits_mlp", str(n), "saved_model.pb").is_file() for n in numbered)
    rows = load_dataset(DataConfig(source="digits")).x_test[:8].astype(np.float32)
    (output,) = answer_predict_request(Path(root, "digits_mlp", str(numbered[-1])), rows).values()
    np.testing.assert_allclose(output, keras_outputs(Path(parent.uri), rows), atol=1e-5)


def test_the_export_helper_imports_no_tensorflow() -> None:
    """Training's driver and the optimise stage import it at the top; TensorFlow starts only when
    a model is exported."""
    code = ("import sys, maas.artifacts.savedmodel, maas.optimize.pipeline\n"
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
