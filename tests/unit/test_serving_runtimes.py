"""A served version runs on the runtime its artefact needs: ONNX Runtime for onnx variants,
TensorFlow for Keras ones; settings can restrict a model to one runtime; TFLite is never served;
a process that serves only ONNX versions never imports TensorFlow. No Ray."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from maas.errors import RegistryError
from maas.optimize.pipeline import run_recipe
from maas.optimize.recipe import RecipeConfig
from maas.registry import Registry
from maas.serving.host import ModelHost
from maas.serving.model import LoadedModel, artifact_runtime
from tests.conftest import REPO
from tests.unit.test_optimize import publish_digits
from tests.unit.test_serve_hosting import direct_batcher


@pytest.fixture(scope="module")
def registry_root(tmp_path_factory) -> str:
    """digits_mlp: 1 Keras, 2 ONNX fp32, 3 ONNX int8, 4 TFLite (not served)."""
    root = str(tmp_path_factory.mktemp("runtimes") / "registry")
    publish_digits(root, epochs=2)
    recipe = RecipeConfig.model_validate({
        "variants": [{"kind": "onnx"}, {"kind": "onnx-int8"}, {"kind": "tflite", "mode": "fp16"}],
        "evaluation": {"batch_sizes": [1], "repeats": 1, "warmup": 0}})
    outcome = run_recipe(Registry(root), "digits_mlp", "1", recipe, log=lambda *a, **k: None)
    assert not outcome.refusals and Registry(root).versions("digits_mlp") == [1, 2, 3, 4]
    return root


def rows(n: int = 16) -> np.ndarray:
    return (np.random.default_rng(1).random((n, 8, 8)) * 16).astype(np.float32)


def _digits_rows(n: int) -> np.ndarray:
    from maas.config import DataConfig
    from maas.data import load_dataset

    return load_dataset(DataConfig(source="digits")).x_test[:n].astype(np.float32)


def test_each_version_loads_on_its_runtime_and_they_agree(registry_root: str) -> None:
    keras_model = LoadedModel.from_registry(registry_root, "digits_mlp", 1)
    onnx_model = LoadedModel.from_registry(registry_root, "digits_mlp", 2)
    int8_model = LoadedModel.from_registry(registry_root, "digits_mlp", 3)
    assert (keras_model.runtime, onnx_model.runtime, int8_model.runtime) == (
        "tensorflow", "onnxruntime", "onnxruntime")
    expected = keras_model.predict(rows())
    np.testing.assert_allclose(onnx_model.predict(rows()), expected, atol=1e-5)
    # int8 is judged on real digits, as optimize judges it: on random noise a 2-epoch model's
    # classes are near ties that quantisation flips (14 of 16 once, in CI)
    digits = _digits_rows(256)
    agreement = (int8_model.predict(digits).argmax(1) == keras_model.predict(digits).argmax(1)).mean()
    assert agreement >= 0.9, agreement
    assert onnx_model.status()["runtime"] == "onnxruntime"


def test_tflite_versions_are_never_served(registry_root: str) -> None:
    metadata = Registry(registry_root).metadata("digits_mlp", 4)
    assert artifact_runtime(metadata) is None
    with pytest.raises(RegistryError, match="not servable"):
        LoadedModel.from_registry(registry_root, "digits_mlp", 4)


def host(root: str) -> ModelHost:
    return ModelHost("digits_mlp", root, 64, batcher=direct_batcher)


@pytest.mark.parametrize(("settings", "served", "default"), [
    ({}, (3,), 3),                                                   # newest servable: int8, not TFLite
    ({"runtime": "tensorflow"}, (1,), 1),
    ({"runtime": "onnxruntime", "versions": {"latest": 2}}, (2, 3), 3),
    ({"versions": {"latest": 3}}, (1, 2, 3), 3),                     # mixed runtimes side by side
])
def test_the_policy_picks_among_versions_of_the_runtime_asked_for(registry_root: str, settings, served,
                                                                   default) -> None:
    async def scenario() -> None:
        model_host = host(registry_root)
        await model_host.configure(settings)
        status = await model_host.status()
        assert tuple(status["served_versions"]) == served, status
        answer = await model_host.infer(rows(2).tolist())
        assert answer["version"] == default and np.asarray(answer["outputs"]).shape == (2, 10)

    asyncio.run(scenario())


def test_a_runtime_with_no_versions_is_a_clear_error(tmp_path: Path) -> None:
    root = str(tmp_path / "registry")
    publish_digits(root, epochs=0)

    async def scenario() -> None:
        model_host = host(root)
        await model_host.configure({"runtime": "onnxruntime"})
        status = await model_host.status()
        assert "no version to serve with runtime 'onnxruntime' (versions: 1: tensorflow)" in str(status)

    asyncio.run(scenario())


ONNX_ONLY_REPLICA = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
started = time.perf_counter()
from maas.serving.replica_setup import keep_serve_lean
keep_serve_lean()  # as Ray's worker setup hook runs it (configs/serve/*.yaml)
import serve.app  # what the Ingress replica loads: Serve, FastAPI, the routes
from maas.serving.model import LoadedModel
model = LoadedModel.from_registry(sys.argv[2], "digits_mlp", 2)
out = model.predict(__import__("numpy").zeros((4, 8, 8), "float32"))
loaded = {name: name in sys.modules for name in ("tensorflow", "tf_keras", "pandas", "pyarrow")}
import pandas  # the block is lifted: whoever needs pandas later still gets it
print(json.dumps({**loaded, "shape": list(out.shape), "seconds": time.perf_counter() - started,
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def test_a_process_serving_only_onnx_never_imports_tensorflow_pandas_or_pyarrow(registry_root: str) -> None:
    """TensorFlow, and pandas + pyarrow (~100 MiB together) that Serve's helpers and pyarrow's
    filesystem would pull in: none is loaded by a replica serving an ONNX version from a local
    registry."""
    done = subprocess.run([sys.executable, "-c", ONNX_ONLY_REPLICA, str(REPO), registry_root],
                          capture_output=True, text=True, check=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["shape"] == [4, 10]
    assert not any(report[name] for name in ("tensorflow", "tf_keras", "pandas", "pyarrow")), report


def test_every_answer_names_what_produced_it(registry_root: str) -> None:
    registry = Registry(registry_root)

    async def scenario() -> dict:
        model_host = host(registry_root)
        await model_host.configure({"versions": {"specific": [1, 2]}})
        return {v: await model_host.infer(rows(1).tolist(), version=str(v)) for v in (1, 2)}

    answers = asyncio.run(scenario())
    keras_headers, onnx_headers = answers[1]["lineage"], answers[2]["lineage"]
    assert keras_headers["X-Model-Name"] == "digits_mlp" and keras_headers["X-Model-Version"] == "1"
    assert keras_headers["X-Model-Runtime"] == "tensorflow" and "X-Model-Parent" not in keras_headers
    hash_2 = registry.get("digits_mlp", 2).content_hash.removeprefix("sha256:")
    assert onnx_headers["X-Model-Hash"] == hash_2[:16] and onnx_headers["X-Model-Runtime"] == "onnxruntime"
    assert onnx_headers["X-Model-Parent"] == "digits_mlp/1"
