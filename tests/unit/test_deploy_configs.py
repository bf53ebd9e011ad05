"""Deployment files checked offline with Ray's own validators (what `ray up` / `serve deploy` run)."""

from pathlib import Path

import pytest
import yaml

from maas.schema import validate_config
from maas.serving.settings import IngressSettings, ModelSettings, ServeAppConfig
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
        deployments = {d.name: d for d in app.deployments}
        ingress = deployments["Ingress"]
        hosted = IngressSettings.model_validate(ingress.user_config or {}).models
        for model in args.models:
            if model.hosting == "ingress":  # tuned by the Ingress's user_config
                assert model.name in hosted and model.name not in deployments, model.name
                settings, max_ongoing = hosted[model.name], ingress.max_ongoing_requests
            else:  # a deployment of its own, named after the model
                assert model.name in deployments and model.name not in hosted, model.name
                deployment = deployments[model.name]
                settings = validate_config(ModelSettings, deployment.user_config or {})
                max_ongoing = deployment.max_ongoing_requests
            assert max_ongoing > settings.max_batch_size, f"{model.name}: batches could never fill"
