"""The ``pruned`` variant: magnitude pruning with fine-tuning (tensorflow-model-optimization),
stripped, registered as a plain Keras version with its own SavedModel, and exportable to ONNX."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from maas.artifacts.keras_loader import load_keras_bytes
from maas.errors import ConfigError
from maas.optimize.pipeline import run_recipe
from maas.optimize.recipe import RecipeConfig
from maas.registry import Registry
from tests.unit.test_optimize import FAST_EVALUATION, publish_digits

pytest.importorskip("tensorflow_model_optimization")

QUIET = {"log": lambda *a, **k: None}


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pruned") / "registry")
    publish_digits(root, epochs=15)  # a parent worth pruning (test accuracy ~0.94)
    recipe = RecipeConfig.model_validate({
        # workers 0: in this process (unit tests start no Ray); the Ray Train run, its checkpoints
        # and a worker killed mid-run: tests/integration/test_optimize_pruning.py
        "variants": [{"kind": "pruned", "target_sparsity": 0.5, "epochs": 3, "min_agreement": 0.9,
                      "workers": 0}],
        "evaluation": FAST_EVALUATION})
    outcome = run_recipe(Registry(root), "digits_mlp", "1", recipe, **QUIET)
    return root, outcome


def _kernels(model) -> list[np.ndarray]:
    return [layer.get_weights()[0] for layer in model.layers if type(layer).__name__ == "Dense"]


def test_pruned_version_holds_the_target_share_of_zeros_and_keeps_its_accuracy(pruned) -> None:
    root, outcome = pruned
    assert not outcome.refusals, outcome.refusals
    registry = Registry(root)
    version = registry.get("digits_mlp", "2")
    metrics = version.metadata["metrics"]
    assert version.metadata["parent_version"] == 1
    assert version.metadata["artifact"]["format"] == "keras"
    assert metrics["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert metrics["test_accuracy"] >= outcome.rows[0].figures["test_accuracy"] - 0.05
    assert metrics["top1_agreement"] >= 0.9
    assert metrics["compressed_size_bytes"] < metrics["parent_compressed_size_bytes"]
    files = registry.read_verified(version, None)
    model = load_keras_bytes(files["model.keras"], "model.keras", "pruned")  # the allow-list passes it
    for kernel in _kernels(model):
        assert (kernel == 0).mean() == pytest.approx(0.5, abs=0.02)
    assert version.metadata["saved_model"]["of"] != "parent"  # its own SavedModel: the zeros are the variant
    assert "saved_model.pb" in files


def test_a_pruned_version_is_a_parent_like_any_keras_version(pruned) -> None:
    root, _ = pruned
    recipe = RecipeConfig.model_validate({"variants": [{"kind": "onnx"}], "evaluation": FAST_EVALUATION})
    outcome = run_recipe(Registry(root), "digits_mlp", "2", recipe, **QUIET)
    assert not outcome.refusals
    onnx = Registry(root).get("digits_mlp", str(outcome.rows[-1].version))
    assert onnx.metadata["parent_version"] == 2 and onnx.metadata["metrics"]["max_abs_diff"] < 1e-4


def test_without_tfmot_the_variant_is_refused_with_how_to_install(monkeypatch) -> None:
    from maas.optimize import prune

    monkeypatch.setitem(sys.modules, "tensorflow_model_optimization", None)
    with pytest.raises(ConfigError, match="pip install --no-deps"):
        prune.tfmot()


def test_a_checkpoints_weights_rebuild_the_same_stripped_model_on_the_driver(tmp_path) -> None:
    """What the Ray Train run hands back (the wrapped model's weights, through an .npz checkpoint)
    becomes, on the driver, exactly the model the ranks trained, stripped."""
    from maas.config import DataConfig
    from maas.data import load_dataset
    from maas.optimize.prune import PruneJob, compile_for_finetuning, strip, tfmot, wrap_for_pruning
    from maas.optimize.prune_train import WEIGHTS_FILE, _read_weights, strip_weights

    root = str(tmp_path / "registry")
    publish_digits(root, epochs=2)
    content = Registry(root).read_verified(Registry(root).get("digits_mlp", 1), None)["model.keras"]
    splits = load_dataset(DataConfig(source="digits"))
    x, y = np.asarray(splits.x_train, np.float32), np.asarray(splits.y_train)
    job = PruneJob(content, "model.keras", "parent", 0.5, 2, 64, 1e-4, 0, 1, 1, 0)
    parent = load_keras_bytes(content, "model.keras", "parent")
    wrapped, names = wrap_for_pruning(parent, "parent", 0.5, job.epochs * job.steps_per_epoch(len(x)))
    compile_for_finetuning(wrapped, job.learning_rate)
    wrapped.fit(x, y, batch_size=64, epochs=2, verbose=0,
                callbacks=[tfmot().sparsity.keras.UpdatePruningStep()])
    np.savez(tmp_path / WEIGHTS_FILE, *wrapped.get_weights())
    rebuilt = strip_weights(job, _read_weights(tmp_path), len(x))
    trained = strip(wrapped, names)
    assert rebuilt.sparsity == pytest.approx(trained.sparsity)
    assert rebuilt.sparsity == pytest.approx(0.5, abs=0.02)
    for ours, theirs in zip(_kernels(rebuilt.model), _kernels(trained.model), strict=True):
        np.testing.assert_array_equal(ours, theirs)
