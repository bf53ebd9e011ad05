"""Captured traffic over real HTTP (issue 16 item 4): capture at rate 1.0 on a model hosted in the
Ingress and on one in a deployment of its own; requests of both protocols, feedback for some of
them (by the X-Request-ID each answer carried, the caller's own or the one Serve made up); the
Parquet read back holds exactly the requests sent, their inputs and the outputs answered, with the
labels joined by request id. Replicas spool; the compactor process each starts writes the Parquet.
The Ingress-hosted model's writer flushes every 0.5 s; the other model's never would in this test's
time (flush_s: 3600), so its rows show that a replica spools what it holds when it shuts down
(serve.delete) and its compactor's last pass turns it into Parquet.

The unit tests (``tests/unit/test_capture.py``) cover the buffer's bound, sampling, the reader's
ranges and errors and ``data.source: capture``.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from maas.capture_spool import spool_files, spool_place

pytestmark = pytest.mark.integration

HOSTED, OWN = "digits_mlp", "digits_own"
APP = "capture"


@pytest.fixture(scope="module")
def capture_registry(tmp_path_factory, trained, tiny_job):
    """The trained model registered in a registry of its own under both names (its capture stays
    out of the shared one)."""
    from maas.registry import Registry

    registry = Registry(str(tmp_path_factory.mktemp("capture") / "registry"))
    source = Registry(tiny_job.registry.root).get(HOSTED, 1)
    for name in (HOSTED, OWN):
        registry.publish(name, Path(source.uri), {**source.metadata, "labels": []})
    return registry


def _rows(i: int) -> np.ndarray:
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32)
    count = 1 + i % 3
    return images[i * 3:i * 3 + count]


def _send(url: str, name: str, i: int, protocol: str) -> tuple[str, np.ndarray, np.ndarray]:
    """One request; (its request id as answered, the rows sent, the probabilities answered)."""
    rows = _rows(i)
    headers = {"X-Request-ID": f"{name}-{protocol}-{i}"} if i % 2 == 0 else {}  # odd: Serve makes one
    if protocol == "v1":
        reply = requests.post(f"{url}/v1/models/{name}:predict", json={"instances": rows.tolist()},
                              headers=headers, timeout=30)
        outputs = reply.json()["predictions"] if reply.status_code == 200 else None
    else:
        body = {"inputs": [{"name": "inputs", "shape": list(rows.shape), "datatype": "FP32",
                            "data": rows.reshape(-1).tolist()}]}
        reply = requests.post(f"{url}/v2/models/{name}/infer", json=body, headers=headers, timeout=30)
        outputs = (np.asarray(reply.json()["outputs"][0]["data"]).reshape(len(rows), -1)
                   if reply.status_code == 200 else None)
    assert reply.status_code == 200, reply.text
    request_id = reply.headers["X-Request-ID"]
    if "X-Request-ID" in headers:
        assert request_id == headers["X-Request-ID"]
    return request_id, rows, np.asarray(outputs, dtype=np.float32)


def _read(registry: Any, name: str) -> Any:
    from maas.capture import read_captured

    now = datetime.now(timezone.utc)
    return read_captured(registry.root_uri, name, now - timedelta(hours=1), now + timedelta(minutes=5))


def test_captured_rows_equal_the_requests_sent_with_labels_joined(serve_http, capture_registry) -> None:
    from ray import serve

    from serve.app import build_app

    capture = {"rate": 1.0, "flush_s": 0.5, "compact_idle_pct": 0}  # compact whatever the load
    app = build_app({"registry_root": capture_registry.root_uri, "models": [
        {"name": HOSTED, "hosting": "ingress", "user_config": {"capture": capture}},
        {"name": OWN, "hosting": "deployment", "user_config": {"capture": {**capture, "flush_s": 3600}}}]})
    serve.run(app, name=APP, route_prefix=f"/{APP}")
    url = f"http://{serve_http}/{APP}"
    deleted = False
    try:
        sent: dict[str, dict[str, tuple[np.ndarray, np.ndarray, str]]] = {HOSTED: {}, OWN: {}}
        labels: dict[str, dict[str, list[str]]] = {HOSTED: {}, OWN: {}}
        from sklearn.datasets import load_digits

        truth = load_digits().target
        for name in (HOSTED, OWN):
            for i in range(12):
                protocol = "v1" if i % 2 == 0 else "v2"
                request_id, rows, outputs = _send(url, name, i, protocol)
                sent[name][request_id] = (rows, outputs, protocol)
                if i % 3 != 2:  # feedback for two requests in three: their true digits
                    given = [str(int(t)) for t in truth[i * 3:i * 3 + len(rows)]]
                    reply = requests.post(f"{url}/v1/models/{name}/feedback", timeout=30,
                                          json={"request_id": request_id, "label": [int(g) for g in given]})
                    assert reply.status_code == 200 and reply.json()["captured"], reply.text
                    labels[name][request_id] = given

        # the Ingress-hosted model: spooled by its replica's writer within a flush or two, then
        # Parquet from the compactor process it started
        expected_rows = sum(len(rows) for rows, _, _ in sent[HOSTED].values())
        _check(_wait_for_rows(capture_registry, HOSTED, expected_rows, len(labels[HOSTED])), sent[HOSTED],
               labels[HOSTED])
        assert len(_read(capture_registry, OWN).inputs) == 0  # flush_s 3600: still in its replica

        serve.delete(APP)  # a replica shutting down spools what it holds; its compactor's last pass
        deleted = True
        own_rows = sum(len(rows) for rows, _, _ in sent[OWN].values())
        _check(_wait_for_rows(capture_registry, OWN, own_rows, len(labels[OWN])), sent[OWN], labels[OWN])
        for medium in ("memory", "disk"):  # memory: the default spool; disk: nothing went there
            assert not spool_files(spool_place(capture_registry.root_uri, OWN, medium, 1 << 30).directory)
        print(f"captured {expected_rows} rows of {len(sent[HOSTED])} requests (ingress) and the "
              f"deployment's at shutdown; {len(labels[HOSTED])} + {len(labels[OWN])} labelled")
    finally:
        if not deleted:
            serve.delete(APP)


def _wait_for_rows(registry: Any, name: str, rows: int, labelled: int, timeout_s: float = 30) -> Any:
    deadline, captured = time.time() + timeout_s, None
    while time.time() < deadline:
        captured = _read(registry, name)
        if len(captured.inputs) >= rows and captured.feedback_records >= labelled:
            break
        time.sleep(0.25)
    return captured


def _check(captured: Any, sent: dict[str, tuple[np.ndarray, np.ndarray, str]],
           labels: dict[str, list[str]]) -> None:
    """Captured rows == the requests sent: every row once, inputs and outputs intact, labels
    joined where feedback was sent and only there."""
    assert captured is not None
    expected = sum(len(rows) for rows, _, _ in sent.values())
    assert len(captured.inputs) == expected, (len(captured.inputs), expected)
    inputs = np.asarray(captured.inputs, dtype=np.float32)
    by_request: dict[str, list[int]] = {}
    for index, request_id in enumerate(captured.request_ids):
        by_request.setdefault(request_id, []).append(index)
    assert set(by_request) == set(sent)
    for request_id, (rows, outputs, protocol) in sent.items():
        mine = by_request[request_id]
        assert len(mine) == len(rows)
        np.testing.assert_array_equal(inputs[mine].reshape(rows.shape), rows)
        np.testing.assert_allclose(np.asarray(captured.outputs)[mine], outputs, rtol=1e-6, atol=1e-7)
        assert [int(p) for p in captured.predicted[mine]] == outputs.argmax(axis=1).tolist()
        assert {captured.protocols[i] for i in mine} == {protocol}
        got = [captured.labels[i] for i in mine]
        assert got == (labels.get(request_id) or [None] * len(rows)), (request_id, got)
    assert set(captured.versions.tolist()) == {1}
