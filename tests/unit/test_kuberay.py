"""KubeRay manifests: shape of the custom resources, no drift from configs/serve, Serve's own schema."""

import importlib.util
import subprocess
import sys
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

KUBERAY = REPO / "deploy" / "kuberay"


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((KUBERAY / name).read_text())


@pytest.fixture(scope="module")
def rayjob() -> dict[str, Any]:
    return _load("rayjob-train.yaml")


@pytest.fixture(scope="module")
def rayservice() -> dict[str, Any]:
    return _load("rayservice.yaml")


@pytest.fixture(scope="module")
def render() -> ModuleType:
    # render.py is a script, not a package module: load it from its path.
    spec = importlib.util.spec_from_file_location("kuberay_render", KUBERAY / "render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _containers_of(group: dict[str, Any]) -> list[dict[str, Any]]:
    return group["template"]["spec"]["containers"]


def _containers(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for g in groups for c in _containers_of(g)]


def _check_cluster(cluster: dict[str, Any]) -> None:
    assert cluster["rayVersion"] == "2.60.0"
    assert cluster["authOptions"] == {"mode": "token"}
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert cluster["workerGroupSpecs"], "no worker group"
    for container in _containers(cluster):
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["MAAS_REGISTRY"].startswith("s3://") and env["MAAS_STORAGE"].startswith("s3://")
        assert env["TF_USE_LEGACY_KERAS"] == "1"


def test_rayjob_runs_training_on_a_cluster_with_a_gpu_group(rayjob: dict[str, Any]) -> None:
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    spec = rayjob["spec"]
    assert spec["entrypoint"] == "python -m train --config configs/train/digits_mlp.yaml"
    cluster = spec["rayClusterSpec"]
    _check_cluster(cluster)
    gpus = [sum(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) for c in _containers_of(g))
            for g in cluster["workerGroupSpecs"]]
    assert any(n > 0 for n in gpus), "no worker group requests nvidia.com/gpu"
    assert any(n == 0 for n in gpus), "no CPU-only worker group"


def test_rayjob_ships_the_pinned_project(rayjob: dict[str, Any]) -> None:
    # The stock image lacks the project; the runtime env must bring the code, configs/ and deps.
    runtime_env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    assert runtime_env["working_dir"].endswith("/v0.1.0.zip")
    assert any(p.startswith("maas @ ") and "v0.1.0" in p for p in runtime_env["pip"])


def test_rayservice_embeds_exactly_our_serve_applications(rayservice: dict[str, Any]) -> None:
    assert (rayservice["apiVersion"], rayservice["kind"]) == ("ray.io/v1", "RayService")
    _check_cluster(rayservice["spec"]["rayClusterConfig"])
    embedded = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    ours = yaml.safe_load((REPO / "configs" / "serve" / "digits.yaml").read_text())
    assert embedded["applications"] == ours["applications"]


def test_rayservice_serve_config_passes_serves_schema(rayservice: dict[str, Any]) -> None:
    from ray.serve.schema import ServeDeploySchema

    deploy = ServeDeploySchema.model_validate(yaml.safe_load(rayservice["spec"]["serveConfigV2"]))
    # Inside a pod Serve must listen beyond loopback, or KubeRay's serve Service cannot reach it.
    assert deploy.http_options.host == "0.0.0.0"
    assert [app.import_path for app in deploy.applications] == ["serve.app:build_app"]


def test_committed_manifests_equal_the_generators_output(render: ModuleType) -> None:
    rendered = render.render()
    assert set(rendered) == {KUBERAY / "rayjob-train.yaml", KUBERAY / "rayservice.yaml"}
    for path, text in rendered.items():
        assert path.read_text() == text, f"{path.name} is stale: run `python deploy/kuberay/render.py`"


def test_generator_check_mode_runs_from_the_repo_root() -> None:
    result = subprocess.run([sys.executable, "deploy/kuberay/render.py", "--check"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
