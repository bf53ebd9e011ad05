"""The Grafana serving dashboard: required panels, only metric names we export, a datasource each."""

import json
import re
from typing import Any

import pytest

from tests.conftest import REPO

DASHBOARD = REPO / "dashboards" / "grafana_serving.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# What ray.util.metrics exports through Ray's Prometheus endpoint (prefixed `ray_`), and Serve's own.
KNOWN_METRICS = {
    "ray_maas_requests_total": "counter",
    "ray_maas_request_latency_ms": "histogram",
    "ray_maas_batch_size": "histogram",
    "ray_maas_rows_predicted_total": "counter",
    "ray_serve_deployment_replica_healthy": "gauge",
}
SERIES = {
    series
    for name, kind in KNOWN_METRICS.items()
    for series in ([f"{name}_bucket", f"{name}_sum", f"{name}_count"] if kind == "histogram" else [name])
}

# Title start -> text every such panel's queries must contain between them.
REQUIRED_PANELS = {
    "Request rate": ["ray_maas_requests_total", "status"],
    "Latency": ["histogram_quantile(0.5,", "histogram_quantile(0.95,", "histogram_quantile(0.99,",
                "ray_maas_request_latency_ms_bucket"],
    "Batch size": ["ray_maas_batch_size_sum", "ray_maas_batch_size_count", "histogram_quantile(0.95,"],
    "Error rate": ['status=~"4.."', 'status=~"5.."'],
    "Rows predicted": ["ray_maas_rows_predicted_total"],
    "Healthy replicas": ["ray_serve_deployment_replica_healthy", "deployment"],
}

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
            "offset", "bool"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers left once strings, label matchers, ranges,
    label lists, function calls and keywords are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", text):
        is_call = text[match.end():].lstrip().startswith("(")
        if not is_call and match.group() not in KEYWORDS:
            names.add(match.group())
    return names


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _exprs(panel: dict[str, Any]) -> list[str]:
    return [t["expr"] for t in panel.get("targets", [])]


def test_metric_name_parser_finds_names_and_ignores_the_rest() -> None:
    expr = ("histogram_quantile(0.95, sum by (model, le) "
            '(rate(foo_bucket{model=~"$model", status=~"5.."}[$__rate_interval])))'
            " / on (model) group_left bar * 0 or baz offset 5m")
    assert metric_names(expr) == {"foo_bucket", "bar", "baz"}


def test_dashboard_is_a_grafana_dashboard_with_a_prometheus_variable(dashboard: dict[str, Any]) -> None:
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


@pytest.mark.parametrize("title_start", REQUIRED_PANELS)
def test_required_panel_exists(dashboard: dict[str, Any], title_start: str) -> None:
    panels = [p for p in dashboard["panels"] if p["title"].startswith(title_start)]
    assert len(panels) == 1, f"expected one panel titled '{title_start}...'"
    queries = " ".join(_exprs(panels[0]))
    for needle in REQUIRED_PANELS[title_start]:
        assert needle in queries, f"'{title_start}' panel lacks {needle}"


def test_every_query_uses_only_known_metrics(dashboard: dict[str, Any]) -> None:
    used = set()
    for panel in dashboard["panels"]:
        for expr in _exprs(panel):
            names = metric_names(expr)
            assert names, f"no metric found in {expr!r}"
            assert names <= SERIES, f"unknown metric(s) {names - SERIES} in panel '{panel['title']}'"
            used |= names
    variable_queries = [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert all(re.search(r"label_values\((\w+),", q)[1] in SERIES for q in variable_queries)
    assert {"ray_maas_request_latency_ms_bucket", "ray_serve_deployment_replica_healthy"} <= used


def test_every_panel_has_a_title_and_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    for panel in dashboard["panels"]:
        assert panel.get("title"), f"panel {panel['id']} has no title"
        assert panel.get("datasource") == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", DATASOURCE) == DATASOURCE, panel["title"]
