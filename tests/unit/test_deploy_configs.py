"""Deployment files checked offline with Ray's own validators (what `ray up` / `serve deploy` run)."""

from pathlib import Path

import pytest
import yaml

from maas.config import validate_config
from maas.serving import ModelSettings, ServeAppConfig
from tests.conftest import REPO

SERVE_CONFIGS = sorted((REPO / "configs" / "serve").glob("*.yaml"))


def test_cluster_yaml_passes_rays_validator() -> None:
    from ray.autoscaler._private.util import prepare_config
    from ray.autoscaler._private.util import validate_config as ray_validate

    config = prepare_config(yaml.safe_load((REPO / "cluster.yaml").read_text()))
    ray_validate(config)
    assert config["available_node_types"]["head"]["resources"] == {"CPU": 0}


@pytest.mark.parametrize("path", SERVE_CONFIGS, ids=lambda p: p.name)
def test_serve_configs_match_serve_and_our_schemas(path: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    deploy = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    for app in deploy.applications:
        assert app.import_path == "serve.app:build_app"
        args = validate_config(ServeAppConfig, app.args)
        names = {d.name for d in app.deployments}
        assert {m.name for m in args.models} <= names, "every model needs its deployment block"
        for deployment in app.deployments:
            if deployment.name != "Ingress":
                ModelSettings.model_validate(deployment.user_config or {})
                assert deployment.max_ongoing_requests > deployment.user_config["max_batch_size"]
