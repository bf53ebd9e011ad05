"""Optimise and export (maas/optimize): conversion matches Keras, refusals say why, and every
variant is published with its parent and measured trade-off. No Ray."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from maas.config import DataConfig, ModelConfig, TrainJobConfig, config_to_dict
from maas.data import DataSchema, load_dataset
from maas.errors import ConfigError, ModelError
from maas.models import build_model, compile_model
from maas.optimize import onnx_export
from maas.optimize.pipeline import format_table, run_recipe
from maas.optimize.recipe import RecipeConfig, load_recipe
from maas.optimize.runtime import load_onnx_session
from maas.registry import Registry
from maas.tfkeras import save_model
from tests.conftest import REPO

IMAGE = DataSchema(input_shape=(8, 8), classes=list(range(10)), source="test-images")
FAST_EVALUATION = {"batch_sizes": [1, 8], "repeats": 3, "warmup": 1}
PARENT_SAVED_MODEL = {"saved_model.pb", "fingerprint.pb", "variables/variables.index",
                      "variables/variables.data-00000-of-00001"}


def _rows(n: int = 40) -> np.ndarray:
    return (np.random.default_rng(0).random((n, 8, 8)) * 16).astype(np.float32)


def _tiny(model_type: str):
    x = _rows()
    return build_model(ModelConfig(type=model_type, hidden_units=[16], conv_filters=[4, 8]), IMAGE,
                       x.mean(axis=0), x.var(axis=0) + 1)


def publish_digits(root: str, epochs: int = 3) -> int:
    cfg = TrainJobConfig(data=DataConfig(source="digits"), model=ModelConfig(hidden_units=[32]))
    return publish_trained(root, cfg, "digits_mlp", epochs)


def publish_trained(root: str, cfg: TrainJobConfig, name: str, epochs: int) -> int:
    """A model trained for a few epochs in-process and registered with what training records."""
    splits = load_dataset(cfg.data)
    if splits.schema.is_text:
        model = build_model(cfg.model, splits.schema, None, None, splits.x_train)
    else:
        model = build_model(cfg.model, splits.schema, splits.x_train.mean(axis=0),
                            splits.x_train.var(axis=0) + 1)
    compile_model(model, cfg.optimizer)
    if epochs:
        model.fit(splits.x_train, splits.y_train, epochs=epochs, batch_size=64, verbose=0)
    with tempfile.TemporaryDirectory() as staged:
        save_model(model, str(Path(staged, "model.keras")))
        metadata = {"schema": splits.schema.to_dict(), "config": config_to_dict(cfg), "format": "model.keras",
                    "lineage": {"data_fingerprint": splits.fingerprint}, "metrics": {}}
        return Registry(root).publish(name, staged, metadata).version


@pytest.mark.parametrize("model_type", ["mlp", "cnn"])
def test_tiny_models_convert_and_match_keras(model_type: str) -> None:
    model, x = _tiny(model_type), _rows()
    export = onnx_export.export_onnx(model, IMAGE, x, opset=17, tolerance=1e-4, what="tiny")
    assert export.max_abs_diff <= 1e-5
    session = load_onnx_session(export.content, threads=1)
    assert session.input_name == "inputs"
    np.testing.assert_allclose(session.predict(x), np.asarray(model(x)), atol=1e-5)


def test_onnx_session_from_a_file_uses_the_threads_given_and_cpu_only(tmp_path: Path) -> None:
    model, x = _tiny("mlp"), _rows()
    path = tmp_path / "model.onnx"
    path.write_bytes(onnx_export.convert(model, IMAGE, opset=17))
    predictor = load_onnx_session(path, threads=2)
    options = predictor.session.get_session_options()
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    assert predictor.session.get_providers() == ["CPUExecutionProvider"]
    assert predictor.output_name == "probabilities"
    np.testing.assert_allclose(predictor.predict(x), np.asarray(model(x)), atol=1e-5)


def _short(name: str) -> bool:
    return name[0] == "t" and name[1:].isdigit()


def test_compact_names_keep_the_model_and_its_interface_and_shrink_it(tmp_path: Path) -> None:
    import onnx
    import tf2onnx

    from maas.optimize.quantize import _dynamic, quantize
    from maas.tfkeras import tensorflow

    model, x = _tiny("mlp"), _rows()
    spec = tensorflow().TensorSpec((None, 8, 8), "float32", name="inputs")
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=(spec,), opset=17)
    fp32 = proto.SerializeToString()  # tf2onnx's own names
    (tmp_path / "fp32.onnx").write_bytes(fp32)
    _dynamic(tmp_path / "fp32.onnx", tmp_path / "int8.onnx")  # the quantiser's own names
    for before in (fp32, (tmp_path / "int8.onnx").read_bytes()):
        after = onnx_export.compact_names(before)
        assert len(after) < 0.9 * len(before)
        old, new = onnx.load_from_string(before), onnx.load_from_string(after)
        onnx.checker.check_model(new)
        assert [i.name for i in new.graph.input] == [i.name for i in old.graph.input] == ["inputs"]
        assert [o.name for o in new.graph.output] == [o.name for o in old.graph.output] == ["probabilities"]
        assert all(_short(t.name) for t in new.graph.initializer)
        np.testing.assert_array_equal(load_onnx_session(after).predict(x),
                                      load_onnx_session(before).predict(x))
    # what the pipeline registers is compact: the fp32 export, and int8 quantised from it
    exported = onnx_export.convert(model, IMAGE, opset=17)
    for content in (exported, quantize(exported, "dynamic")):
        assert all(_short(t.name) for t in onnx.load_from_string(content).graph.initializer)


def test_compact_names_leave_a_graph_with_subgraphs_alone() -> None:
    from onnx import TensorProto, helper

    branch = helper.make_graph([helper.make_node("Identity", ["outer_value"], ["branch_out"])], "branch", [],
                               [helper.make_tensor_value_info("branch_out", TensorProto.FLOAT, [1])])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["outer_value"]),
         helper.make_node("If", ["condition"], ["y"], then_branch=branch, else_branch=branch)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("condition", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    content = helper.make_model(graph).SerializeToString()
    assert onnx_export.compact_names(content) == content


def test_compact_names_leave_a_graph_with_sparse_initializers_alone() -> None:
    from onnx import TensorProto, helper

    values = helper.make_tensor("long/sparse/weight:0", TensorProto.FLOAT, [1], [2.0])
    indices = helper.make_tensor("indices", TensorProto.INT64, [1], [0])
    sparse = helper.make_sparse_tensor(values, indices, [2])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "long/sparse/weight:0"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], sparse_initializer=[sparse])
    content = helper.make_model(graph).SerializeToString()
    assert onnx_export.compact_names(content) == content


def test_outputs_above_the_tolerance_are_refused(monkeypatch) -> None:
    model, x = _tiny("mlp"), _rows()
    real = onnx_export.keras_predict
    monkeypatch.setattr(onnx_export, "keras_predict", lambda m, rows: real(m, rows) + 2e-4)
    with pytest.raises(ModelError, match=r"differ from Keras's by up to 0.0002.*tolerance 0.0001"):
        onnx_export.export_onnx(model, IMAGE, x, opset=17, tolerance=1e-4, what="model 'm' version 1")


def test_text_models_are_refused_with_why_and_what_works() -> None:
    schema = DataSchema(input_shape=(), classes=[0, 1], dtype="string", source="test-text")
    model = build_model(ModelConfig(type="text", vocab_size=20, sequence_length=4), schema, None, None,
                        np.array(["a good film", "a bad film"]))
    with pytest.raises(ModelError) as caught:
        onnx_export.refuse_text_models(model, schema, "model 'reviews' version 2")
    message = str(caught.value)
    assert "TextVectorization" in message and "savedmodel" in message and "version 2" in message


def test_recipe_is_strict_and_overridable(tmp_path: Path) -> None:
    recipe = load_recipe(REPO / "configs/optimize/default.yaml", ["evaluation.repeats=7"])
    assert [v.kind for v in recipe.variants] == ["onnx", "onnx-int8", "savedmodel"]
    assert recipe.evaluation.repeats == 7
    edge = load_recipe(REPO / "configs/optimize/edge.yaml")
    assert [(v.kind, v.mode) for v in edge.variants] == [("tflite", "fp16"), ("tflite", "int8")]
    with pytest.raises(ConfigError, match="unknown key"):
        load_recipe(REPO / "configs/optimize/default.yaml", ["variants=[{kind: onnx, tolerence: 1}]"])
    pruned = load_recipe(REPO / "configs/optimize/pruned.yaml")
    assert [(v.kind, v.target_sparsity) for v in pruned.variants] == [("pruned", 0.5)]
    with pytest.raises(ConfigError, match="variants"):  # a kind that does not exist
        load_recipe(REPO / "configs/optimize/default.yaml", ["variants=[{kind: distilled}]"])
    with pytest.raises(ConfigError, match="unique"):
        load_recipe(REPO / "configs/optimize/default.yaml", ["variants=[{kind: onnx}, {kind: onnx}]"])


@pytest.fixture(scope="module")
def digits_registry(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("optimize") / "registry")
    publish_digits(root)
    return root


@pytest.fixture(scope="module")
def outcome(digits_registry: str):
    recipe = RecipeConfig.model_validate({
        "variants": [{"kind": "onnx", "labels": ["onnx"]}, {"kind": "onnx-int8"},
                     {"kind": "onnx-int8", "name": "int8-static", "mode": "static", "calibration_rows": 64},
                     {"kind": "savedmodel"}, {"kind": "tflite", "mode": "int8", "calibration_rows": 64}],
        "evaluation": FAST_EVALUATION})
    return run_recipe(Registry(digits_registry), "digits_mlp", "1", recipe, log=lambda *a, **k: None)


def test_each_variant_is_a_new_version_with_parent_and_tradeoff(digits_registry: str, outcome) -> None:
    assert not outcome.refusals
    assert [(row.variant, row.version) for row in outcome.rows] == [
        ("keras (v1)", 1), ("onnx", 2), ("onnx-int8", 3), ("int8-static", 4), ("savedmodel", 5),
        ("tflite", 6)]
    registry = Registry(digits_registry)
    onnx = registry.get("digits_mlp", "onnx")  # the recipe's label
    meta = onnx.metadata
    assert onnx.version == 2 and meta["parent_version"] == 1 and meta["format"] == "model.onnx"
    assert meta["artifact"] == {"format": "onnx", "file": "model.onnx", "runtime": "onnxruntime",
                                "input": "inputs", "output": "probabilities", "opset": 17,
                                "quantization": None}
    assert meta["metrics"]["max_abs_diff"] <= 1e-4 and meta["metrics"]["top1_agreement"] == 1.0
    assert {"latency_ms_batch1", "latency_ms_batch8", "size_bytes", "test_accuracy"} <= set(meta["metrics"])
    assert meta["optimization"]["variant"]["kind"] == "onnx"
    assert meta["lineage"]["parent"]["version"] == 1 and meta["schema"]["input_shape"] == [8, 8]
    # and the parent's float SavedModel, for TensorFlow Serving (tests/unit/test_savedmodel_layout.py)
    assert set(meta["files"]) == {"model.onnx", *PARENT_SAVED_MODEL}


def test_int8_is_smaller_and_agrees(digits_registry: str, outcome) -> None:
    registry = Registry(digits_registry)
    for version in (3, 4):
        meta = registry.get("digits_mlp", version).metadata
        assert meta["artifact"]["quantization"] in ("int8-dynamic", "int8-static")
        assert meta["metrics"]["top1_agreement"] >= 0.95
        assert meta["optimization"]["tradeoff"]["size_ratio"] < 1
    fp32 = registry.get("digits_mlp", 2).metadata["metrics"]["size_bytes"]
    # a tiny model: the normalisation constants and graph overhead stay fp32; wide layers get ~4x
    assert registry.get("digits_mlp", 3).metadata["metrics"]["size_bytes"] < 0.7 * fp32


def test_tflite_is_registered_for_download_not_serving(digits_registry: str, outcome) -> None:
    entry = Registry(digits_registry).get("digits_mlp", 6)
    assert set(entry.metadata["files"]) == {"model.tflite", *PARENT_SAVED_MODEL}
    assert entry.metadata["format"] == "model.tflite"
    assert entry.metadata["artifact"] == {"format": "tflite", "file": "model.tflite", "runtime": "tflite",
                                          "served": False, "quantization": "int8"}
    assert entry.metadata["metrics"]["top1_agreement"] >= 0.95


def test_a_parent_without_a_savedmodel_is_exported_once_for_all_its_variants(digits_registry: str,
                                                                            outcome) -> None:
    """Version 1 here was registered with model.keras alone (as versions were before publishing
    wrote a SavedModel): the ONNX, int8 and TFLite versions carry one export of it, marked as the
    parent's; the savedmodel variant carries its own."""
    registry = Registry(digits_registry)
    assert "saved_model" not in registry.get("digits_mlp", 1).metadata
    contents = set()
    for version in (2, 3, 4, 6):
        entry = registry.get("digits_mlp", version)
        saved = entry.metadata["saved_model"]
        assert saved["of"] == "parent" and saved["parent_version"] == 1 and saved["max_abs_diff"] <= 1e-4
        assert set(saved["files"]) == PARENT_SAVED_MODEL
        contents.add(Path(entry.uri, "variables/variables.data-00000-of-00001").read_bytes())
    assert len(contents) == 1  # one export, copied
    own = registry.get("digits_mlp", 5).metadata["saved_model"]
    assert own["of"] == "this version" and "parent_version" not in own
    assert own["method"] == "tensorflow/serving/predict" and own["input"] == "inputs"


def test_tflite_fp16_matches_keras_closely() -> None:
    from maas.optimize.tflite import convert_tflite, load_tflite

    model, x = _tiny("mlp"), _rows()
    predictor = load_tflite(convert_tflite(model, "fp16"))
    np.testing.assert_allclose(predictor.predict(x), np.asarray(model(x)), atol=5e-3)
    assert predictor.predict(x[:3]).shape == (3, 10)  # resized for another batch size


def test_savedmodel_is_in_tf_serving_layout_and_loads_in_a_fresh_process(digits_registry: str,
                                                                          outcome) -> None:
    registry = Registry(digits_registry)
    entry = registry.get("digits_mlp", 5)
    directory = registry.fetch(entry)
    assert (directory / "saved_model.pb").is_file() and (directory / "variables").is_dir()
    assert entry.metadata["format"] == "model.keras"  # served by TensorFlow as before
    assert entry.metadata["artifact"]["format"] == "savedmodel"
    from tensorflow_serving.apis import predict_pb2  # imports TensorFlow: not at collection time

    rows = load_dataset(DataConfig(source="digits")).x_test[:16].astype(np.float32)
    request = predict_pb2.PredictRequest()  # what a TensorFlow Serving gRPC client sends
    request.model_spec.name, request.model_spec.signature_name = "digits_mlp", "serving_default"
    request.inputs["inputs"].CopyFrom(tf_make_tensor_proto(rows))
    result = json.loads(subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(directory), request.SerializeToString().hex()],
        capture_output=True, text=True, check=True).stdout.splitlines()[-1])
    shown = result["shown"]
    assert "inputs['inputs']" in shown and "tensorflow/serving/predict" in shown and "(-1, 8, 8)" in shown
    response = predict_pb2.PredictResponse.FromString(bytes.fromhex(result["response"]))
    (output,) = response.outputs.values()
    from maas.artifacts.keras_loader import load_keras_bytes
    from maas.tfkeras import tensorflow

    keras_model = load_keras_bytes((directory / "model.keras").read_bytes(), "model.keras", "test")
    np.testing.assert_allclose(tensorflow().make_ndarray(output), np.asarray(keras_model(rows)), atol=1e-5)


def tf_make_tensor_proto(array: np.ndarray):
    from maas.tfkeras import tensorflow

    return tensorflow().make_tensor_proto(array)


# One fresh process (one TensorFlow start, not two): `saved_model_cli show` as its console script
# runs it, then a TF Serving PredictRequest answered the way tensorflow_model_server does: the
# named signature, called with the request's named input tensors, outputs into a PredictResponse.
FRESH_PROCESS = """
import contextlib, io, json, sys
import tensorflow as tf
from tensorflow.python.tools import saved_model_cli
from tensorflow_serving.apis import predict_pb2
directory, request = sys.argv[1], predict_pb2.PredictRequest.FromString(bytes.fromhex(sys.argv[2]))
sys.argv = ['saved_model_cli', 'show', '--dir', directory, '--tag_set', 'serve',
            '--signature_def', 'serving_default']
shown = io.StringIO()
with contextlib.redirect_stdout(shown), contextlib.suppress(SystemExit):
    saved_model_cli.main()
signature = tf.saved_model.load(directory).signatures[request.model_spec.signature_name]
outputs = signature(**{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})
response = predict_pb2.PredictResponse()
for key, value in outputs.items():
    response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
print(json.dumps({'shown': shown.getvalue(), 'response': response.SerializeToString().hex()}))
"""


def test_table_lists_parent_and_variants(outcome) -> None:
    table = format_table(outcome)
    assert table.splitlines()[0].split()[:4] == ["variant", "version", "test_accuracy", "top1_agreement"]
    assert "ms@1" in table and "ms@8" in table and "int8-static" in table


def test_a_variant_below_min_agreement_is_refused_and_the_others_still_run(digits_registry: str,
                                                                           outcome, monkeypatch) -> None:
    from maas.optimize import pipeline

    real = pipeline.measure

    def disagreeing(predictor, splits, labels, size, cfg):  # every variant: 50% agreement
        figures = real(predictor, splits, labels, size, cfg)
        return {**figures, "top1_agreement": 0.5} if labels is not None else figures

    monkeypatch.setattr(pipeline, "measure", disagreeing)
    registry = Registry(digits_registry)
    before = registry.versions("digits_mlp")
    recipe = RecipeConfig.model_validate({"variants": [{"kind": "onnx-int8", "min_agreement": 0.9},
                                                       {"kind": "onnx"}], "evaluation": FAST_EVALUATION})
    result = run_recipe(registry, "digits_mlp", "1", recipe, log=lambda *a, **k: None)
    assert len(result.refusals) == 1 and "agrees with the parent on 50.00%" in str(result.refusals[0])
    assert isinstance(result.refusals[0], ModelError)
    assert registry.versions("digits_mlp") == [*before, before[-1] + 1]  # only the onnx variant
    assert "refused" in format_table(result)
