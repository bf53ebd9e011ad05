"""A CSV with empty cells and categorical columns, trained on the shared Ray instance and served
end to end: the imputation values and vocabularies travel inside the model, so a request may leave
a number out (null) and name a category the model never saw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import requests

from maas.config import load_config
from tests.conftest import REPO, free_port

pytestmark = pytest.mark.integration

CSV = REPO / "configs/train/data/customers.csv"


@pytest.fixture(scope="module")
def server(ray_cluster) -> str:
    """Serve's HTTP address: the one already running in this session, else one started here (and
    shut down after, so a later module's ``serve.start`` gets the port it asks for)."""
    from ray import serve
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is not None:
        yield f"{client.http_config.host}:{client.http_config.port}"
        return
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture(scope="module")
def table_job(workspace: Path):
    return load_config(REPO / "configs/train/customers_table.yaml", [
        f"data.path={CSV}", f"registry.root={workspace / 'registry'}",
        f"run.storage_path={workspace / 'runs'}", "training.epochs=10", "optimizer.learning_rate=0.01",
        "model.hidden_units=[16]", "scaling.num_workers=1"])  # 2 workers: test_preprocessing (unit)


def test_a_csv_with_gaps_and_categories_trains_and_serves_end_to_end(server, table_job) -> None:
    from ray import serve

    from maas.data import DataSchema
    from maas.registry import Registry
    from maas.serving.inputs import to_batch
    from maas.tfkeras import load_model
    from maas.training import run_training
    from serve.app import build_app

    outcome = run_training(table_job, run_name="it-customers")
    meta = outcome.version.metadata
    schema = meta["schema"]
    assert schema["dtype"] == "table" and schema["input_shape"] == [5]
    assert schema["preprocessing"]["missing"] == "impute_median"
    assert set(schema["preprocessing"]["categorical"]) == {"plan", "region"}
    assert meta["saved_model"]["inputs"]["inputs"] == {"dtype": "string", "shape": [-1, 5]}
    assert meta["metrics"]["test_accuracy"] > 0.6

    app = build_app({"registry_root": table_job.registry.root,
                     "models": [{"name": "customers_table", "hosting": "ingress"}]})
    serve.run(app, name="tabular", route_prefix="/tabular")
    try:
        url = f"http://{server}/tabular"
        # columns: tenure_months, monthly_spend, support_calls, plan, region
        rows = [[12, None, 3, "pro", "south"],
                {"tenure_months": None, "support_calls": 0, "plan": "enterprise", "region": "north"},
                [40, 55.5, 1, None, "east"]]
        reply = requests.post(f"{url}/v1/models/customers_table:predict", json={"instances": rows},
                              timeout=60)
        assert reply.status_code == 200, reply.text
        served = np.asarray(reply.json()["predictions"])
        registry = Registry(table_job.registry.root)
        local = load_model(str(registry.fetch(registry.get("customers_table")) / "model.keras"))
        cells = to_batch(rows, DataSchema.from_dict(schema), 10)
        assert cells.tolist()[1] == ["nan", "nan", "0.0", "enterprise", "north"]
        expected = np.asarray(local(cells, training=False))
        assert np.isfinite(served).all() and served.shape == (3, 2)
        np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-6)

        v2 = {"inputs": [{"name": "inputs", "shape": [1, 5], "datatype": "BYTES",
                          "data": ["12", "", "3", "pro", "south"]}]}
        reply = requests.post(f"{url}/v2/models/customers_table/infer", json=v2, timeout=60)
        assert reply.status_code == 200, reply.text
        np.testing.assert_allclose(reply.json()["outputs"][0]["data"], served[0], rtol=1e-4, atol=1e-6)

        bad = requests.post(f"{url}/v1/models/customers_table:predict",
                            json={"instances": [[12, "lots", 3, "pro", "south"]]}, timeout=60)
        assert bad.status_code == 400
        assert "column 'monthly_spend' holds 'lots'; a number is expected" in bad.json()["error"]
        meta_v1 = requests.get(f"{url}/v1/models/customers_table/metadata", timeout=60).json()
        signature = meta_v1["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert signature["inputs"]["inputs"]["dtype"] == "DT_STRING"
    finally:
        serve.delete("tabular")
