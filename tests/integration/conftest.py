"""One small Ray instance for the whole integration session, and one model trained on it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from maas.config import TrainJobConfig, load_config
from tests.conftest import REPO

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    import ray

    from maas.raycluster import init_ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    # 4 logical CPUs on 2 cores: training's 2 workers and the Serve replicas fit side by side.
    init_ray("local", num_cpus=4, include_dashboard=False)
    yield
    try:
        from ray import serve

        serve.shutdown()
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def serve_http(ray_cluster: None) -> str:
    """Serve's HTTP address (``host:port``), started once for the session on a free port; each
    module's applications hang under their own route prefix. ``ray_cluster`` shuts it down."""
    from ray import serve

    from tests.conftest import free_port

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return f"127.0.0.1:{port}"


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("maas")


@pytest.fixture(scope="session")
def tiny_job(workspace: Path) -> TrainJobConfig:
    return load_config(
        [REPO / "configs/train/digits_mlp.yaml", REPO / "configs/train/smoke.yaml"],
        [f"registry.root={workspace / 'registry'}", f"run.storage_path={workspace / 'runs'}",
         "training.epochs=3", "scaling.num_workers=2", "run.checkpoint_every_epochs=1"],
    )


@pytest.fixture(scope="session")
def trained(ray_cluster: None, tiny_job: TrainJobConfig):
    """A real 2-worker training run whose registered model the serving tests reuse."""
    from maas.training import run_training

    return run_training(tiny_job, run_name="it-digits")


@pytest.fixture(scope="session")
def trained_text(ray_cluster: None, workspace: Path):
    """The text classifier (tokenisation inside the model) on the generated reviews."""
    from maas.training import run_training

    job = load_config(REPO / "configs/train/reviews_text.yaml", [
        f"registry.root={workspace / 'registry'}", f"run.storage_path={workspace / 'runs'}",
        "training.epochs=3"])
    return run_training(job, run_name="it-reviews")
