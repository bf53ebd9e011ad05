"""cluster.onprem.yaml checked offline with Ray's own validator (what `ray up` runs), no SSH."""

from typing import Any

import pytest
import yaml

from tests.conftest import REPO

PINNED_INSTALL = 'python3 -m pip install -q "maas @ git+https://github.com/our-org/maas.git@v0.1.0"'
HEAD_IP = "10.0.0.10"
WORKER_IPS = ["10.0.0.11", "10.0.0.12"]


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load((REPO / "cluster.onprem.yaml").read_text())


@pytest.fixture(scope="module")
def prepared(raw: dict[str, Any]) -> dict[str, Any]:
    from ray.autoscaler._private.util import prepare_config
    from ray.autoscaler._private.util import validate_config as ray_validate

    config = prepare_config(raw)
    ray_validate(config)
    return config


def test_passes_rays_validator_as_a_fixed_local_cluster(prepared: dict[str, Any]) -> None:
    # prepare_local turns the IP list into its one internal node type; all workers stay connected.
    assert prepared["head_node_type"] == "local.cluster.node"
    node_type = prepared["available_node_types"]["local.cluster.node"]
    assert node_type["min_workers"] == node_type["max_workers"] == len(WORKER_IPS)


def test_names_the_head_and_worker_machines(raw: dict[str, Any]) -> None:
    assert raw["provider"] == {"type": "local", "head_ip": HEAD_IP, "worker_ips": WORKER_IPS}
    assert "available_node_types" not in raw, "the local provider refuses it"


def test_installs_the_pinned_project_on_every_node(prepared: dict[str, Any]) -> None:
    # setup_commands are merged into both head and worker setup by prepare_config.
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert PINNED_INSTALL in prepared[key]


def test_exports_shared_storage_and_token_auth(raw: dict[str, Any]) -> None:
    exports = " ".join(raw["setup_commands"])
    for setting in ("MAAS_REGISTRY=/mnt/shared/maas/registry", "MAAS_STORAGE=/mnt/shared/maas/runs",
                    "RAY_AUTH_MODE=token", "TF_USE_LEGACY_KERAS=1"):
        assert setting in exports
    # `ray start` in token mode needs the same token on every node.
    assert "~/.ray/auth_token" in raw["file_mounts"]


def _ray_starts(commands: list[str]) -> list[str]:
    return [c for c in commands if c.startswith("ray start")]


def test_dashboard_stays_on_loopback(raw: dict[str, Any]) -> None:
    head_start = _ray_starts(raw["head_start_ray_commands"])
    assert len(head_start) == 1 and "--dashboard-host=127.0.0.1" in head_start[0]


def test_every_node_exports_metrics_on_the_documented_port(raw: dict[str, Any]) -> None:
    # docs/operations.md tells operators to open this port to Prometheus only.
    starts = _ray_starts(raw["head_start_ray_commands"] + raw["worker_start_ray_commands"])
    assert len(starts) == 2 and all("--metrics-export-port=8080" in c for c in starts)
