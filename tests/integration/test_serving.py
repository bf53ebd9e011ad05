import numpy as np
import orjson
import pytest
import requests

from tests.conftest import SteadyLoad

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def endpoint(serve_http, trained, tiny_job):
    from ray import serve

    from serve.app import build_app

    # hosting: ingress, as configs/serve/digits.yaml ships; the model-deployment mode is covered
    # by the swap, scaling and queue tests below.
    app = build_app({"registry_root": tiny_job.registry.root,
                     "models": [{"name": "digits_mlp", "hosting": "ingress"}]})
    serve.run(app, name="maas", route_prefix="/")
    yield f"http://{serve_http}"
    serve.delete("maas")


def _local_model(tiny_job):
    from maas.registry import Registry
    from maas.tfkeras import load_model

    registry = Registry(tiny_job.registry.root)
    return load_model(str(registry.fetch(registry.get("digits_mlp")) / "model.keras"))


def test_predictions_equal_the_models_own_output(endpoint, tiny_job) -> None:
    from maas.data import load_dataset

    rows = load_dataset(tiny_job.data).x_test[:16]
    reply = requests.post(f"{endpoint}/v1/models/digits_mlp:predict", headers={"X-Request-ID": "req-42"},
                          data=orjson.dumps({"instances": rows.tolist()}), timeout=30)
    assert reply.status_code == 200, reply.text
    served = np.asarray(reply.json()["predictions"])
    expected = np.asarray(_local_model(tiny_job)(rows, training=False))
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-6)
    # lineage: what answered, on the answer itself; the caller's request id comes back
    from maas.registry import Registry

    content_hash = Registry(tiny_job.registry.root).get("digits_mlp", 1).content_hash
    assert reply.headers["X-Model-Name"] == "digits_mlp" and reply.headers["X-Model-Version"] == "1"
    assert reply.headers["X-Model-Run"] == "it-digits" and reply.headers["X-Model-Runtime"] == "tensorflow"
    assert content_hash.removeprefix("sha256:").startswith(reply.headers["X-Model-Hash"])
    assert reply.headers["X-Request-ID"] == "req-42"


def test_columnar_inputs_answer_with_outputs(endpoint, tiny_job) -> None:
    rows = np.zeros((2, 8, 8)).tolist()
    reply = requests.post(f"{endpoint}/v1/models/digits_mlp:predict", json={"inputs": rows}, timeout=30)
    assert reply.status_code == 200
    assert np.asarray(reply.json()["outputs"]).shape == (2, 10)


def test_concurrent_requests_are_batched_and_answered_correctly(endpoint, tiny_job) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from maas.data import load_dataset

    rows = load_dataset(tiny_job.data).x_test[:40]
    expected = np.asarray(_local_model(tiny_job)(rows, training=False))

    def one(i: int) -> np.ndarray:
        reply = requests.post(f"{endpoint}/v1/models/digits_mlp:predict",
                              json={"instances": [rows[i].tolist()]}, timeout=30)
        return np.asarray(reply.json()["predictions"][0])

    with ThreadPoolExecutor(16) as pool:
        served = list(pool.map(one, range(len(rows))))
    np.testing.assert_allclose(np.stack(served), expected, rtol=1e-4, atol=1e-6)


def test_status_reports_version_and_state(endpoint) -> None:
    reply = requests.get(f"{endpoint}/v1/models/digits_mlp", timeout=30)
    assert reply.status_code == 200
    status = reply.json()["model_version_status"][0]
    assert status["version"] == "1" and status["state"] == "AVAILABLE"


@pytest.mark.parametrize("path, body, status, message", [
    ("digits_mlp", b"{not json", 400, "not valid JSON"),
    ("digits_mlp", b'{"instances": []}', 400, "empty"),
    ("digits_mlp", b'{"instances": [[1, 2, 3]]}', 400, "shape [8, 8]"),
    ("digits_mlp", b'{"rows": []}', 400, "exactly one of"),
    ("digits_mlp", b'{"instances": [[["a"]]]}', 400, "every value must be a number"),
    ("nope", b'{"instances": [[0]]}', 404, "not served here"),
])
def test_bad_requests_get_clear_4xx(endpoint, path, body, status, message) -> None:
    reply = requests.post(f"{endpoint}/v1/models/{path}:predict", data=body, timeout=30)
    assert reply.status_code == status
    assert message in reply.json()["error"]
    assert requests.get(f"{endpoint}/healthz", timeout=30).status_code == 200


def test_tf_serving_metadata_and_version_routes(endpoint) -> None:
    meta = requests.get(f"{endpoint}/v1/models/digits_mlp/metadata", timeout=30).json()
    signature = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert [d["size"] for d in signature["inputs"]["inputs"]["tensor_shape"]["dim"]] == ["-1", "8", "8"]
    assert requests.get(f"{endpoint}/v1/models/digits_mlp/versions/1", timeout=30).status_code == 200
    body = {"instances": [np.zeros((8, 8)).tolist()]}
    ok = requests.post(f"{endpoint}/v1/models/digits_mlp/versions/1:predict", json=body, timeout=30)
    assert ok.status_code == 200
    missing = requests.post(f"{endpoint}/v1/models/digits_mlp/versions/9:predict", json=body, timeout=30)
    assert missing.status_code == 404 and "version 9 is not served" in missing.json()["error"]
    label = requests.post(f"{endpoint}/v1/models/digits_mlp/labels/canary:predict", json=body, timeout=30)
    assert label.status_code == 404 and "labelled 'canary'" in label.json()["error"]


def test_open_inference_protocol(endpoint, tiny_job) -> None:
    from maas.data import load_dataset

    rows = load_dataset(tiny_job.data).x_test[:3]
    assert requests.get(f"{endpoint}/v2/health/live", timeout=30).json() == {"live": True}
    assert requests.get(f"{endpoint}/v2/health/ready", timeout=30).json() == {"ready": True}
    assert requests.get(f"{endpoint}/v2/models/digits_mlp/ready", timeout=30).json()["ready"] is True
    meta = requests.get(f"{endpoint}/v2/models/digits_mlp", timeout=30).json()
    assert meta["inputs"][0]["shape"] == [-1, 8, 8] and meta["versions"] == ["1"]
    request = {"id": "r1", "inputs": [{"name": "inputs", "shape": [3, 8, 8], "datatype": "FP32",
                                       "data": rows.reshape(-1).tolist()}]}
    reply = requests.post(f"{endpoint}/v2/models/digits_mlp/infer", json=request, timeout=30)
    assert reply.status_code == 200, reply.text
    out = reply.json()
    assert out["id"] == "r1" and out["model_name"] == "digits_mlp" and out["model_version"] == "1"
    tensor = out["outputs"][0]
    served = np.asarray(tensor["data"]).reshape(tensor["shape"])
    np.testing.assert_allclose(served, np.asarray(_local_model(tiny_job)(rows)), rtol=1e-4, atol=1e-6)
    bad = requests.post(f"{endpoint}/v2/models/digits_mlp/infer", json={"inputs": []}, timeout=30)
    assert bad.status_code == 400 and "inputs" in bad.json()["error"]


def test_oversized_and_deeply_nested_bodies_are_4xx(endpoint) -> None:
    nested = b"[" * 5000 + b"]" * 5000
    reply = requests.post(f"{endpoint}/v1/models/digits_mlp:predict", data=nested, timeout=30)
    assert reply.status_code == 400 and "not valid JSON" in reply.json()["error"]
    huge = b'{"instances": [' + b"0," * 5_000_000 + b"0]}"
    reply = requests.post(f"{endpoint}/v1/models/digits_mlp:predict", data=huge, timeout=60)
    assert reply.status_code == 413 and "limit" in reply.json()["error"]
    escaped = requests.post(f"{endpoint}/v1/models/..%2Fetc:predict", json={"instances": [[0]]}, timeout=30)
    assert 400 <= escaped.status_code < 500
    assert requests.get(f"{endpoint}/healthz", timeout=30).status_code == 200


def test_openapi_describes_both_protocols(endpoint) -> None:
    paths = requests.get(f"{endpoint}/openapi.json", timeout=30).json()["paths"]
    assert "/v1/models/{name}:predict" in paths and "/v2/models/{name}/infer" in paths


def test_audit_payloads_record_the_bodies_when_turned_on(endpoint, tiny_job) -> None:
    import json
    import time

    from ray import serve

    from maas import audit
    from serve.app import build_app

    app = build_app({"registry_root": tiny_job.registry.root, "audit_sample_rate": 1.0,
                     "audit_payloads": True,
                     "models": [{"name": "digits_mlp", "hosting": "ingress"}]})
    serve.run(app, name="payloads", route_prefix="/payloads")
    url = f"{endpoint}/payloads/v1/models/digits_mlp:predict"
    request_id = f"payload-{time.time_ns()}"
    try:
        sent = {"instances": [np.full((8, 8), 0.25).tolist()]}
        answer = requests.post(url, json=sent, timeout=30, headers={"X-Request-ID": request_id})
        assert answer.status_code == 200
        refused = requests.post(url, json={"instances": [[1.0]]}, timeout=30,
                                headers={"X-Request-ID": request_id + "-bad"})
        assert refused.status_code == 400
        deadline, found = time.time() + 10, {}
        while time.time() < deadline and len(found) < 2:
            found = {e["request_id"]: e for e in audit.entries(tiny_job.registry.root, action="prediction")
                     if e["request_id"].startswith(request_id)}
            time.sleep(0.5)
        ok, bad = found[request_id], found[request_id + "-bad"]
        assert json.loads(ok["request_body"]["text"]) == sent
        assert json.loads(ok["response_body"]["text"]) == answer.json()
        assert bad["status"] == 400 and json.loads(bad["request_body"]["text"]) == {"instances": [[1.0]]}
        assert bad["response_body"]["text"] == refused.json()["error"]
    finally:
        serve.delete("payloads")


# --- versions, labels, swaps, autoscaling -------------------------------------------------------


def _model_status(app: str, hosting: str) -> dict:
    """What the replica hosting digits_mlp reports, load errors included."""
    from ray import serve

    if hosting == "ingress":
        ingress = serve.get_deployment_handle("Ingress", app_name=app)
        return ingress.hosted_models.remote().result(timeout_s=30)["digits_mlp"]
    return serve.get_deployment_handle("digits_mlp", app_name=app).status.remote().result(timeout_s=30)


def _publish_copy(registry, version: int = 1):
    from pathlib import Path

    source = registry.get("digits_mlp", version)
    return registry.publish("digits_mlp", Path(source.uri), {**source.metadata, "labels": []})


@pytest.mark.parametrize("hosting", ["ingress", "deployment"])
def test_versions_labels_and_swaps_under_steady_load(endpoint, tiny_job, workspace, hosting) -> None:
    """Two versions served with a label; then, with traffic running, a new version is registered
    (picked up by polling and swapped in), then a tampered one (refused: the good one keeps
    serving). Every request during all of it must succeed."""
    import time
    from pathlib import Path

    from ray import serve

    from maas.registry import Registry
    from serve.app import build_app

    registry = Registry(str(workspace / f"swap-registry-{hosting}"))
    source = Registry(tiny_job.registry.root).get("digits_mlp", 1)
    for _ in range(2):
        registry.publish("digits_mlp", Path(source.uri), {**source.metadata, "labels": []})
    settings = {"versions": {"latest": 2}, "labels": {"stable": 1}, "poll_registry_s": 0.5}
    serve.run(build_app({"registry_root": registry.root_uri,
                         "models": [{"name": "digits_mlp", "user_config": settings,
                                     "hosting": hosting}]}),
              name="versioned", route_prefix="/versioned")
    url = f"{endpoint}/versioned"
    try:
        listed = requests.get(f"{url}/v1/models/digits_mlp", timeout=30).json()["model_version_status"]
        assert [v["version"] for v in listed] == ["2", "1"]
        assert requests.get(f"{url}/v1/models/digits_mlp/labels/stable", timeout=30).json()[
            "model_version_status"][0]["version"] == "1"
        assert requests.get(f"{url}/v2/models/digits_mlp", timeout=30).json()["versions"] == ["1", "2"]
        body = {"inputs": [{"name": "inputs", "shape": [1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}]}
        pinned = requests.post(f"{url}/v2/models/digits_mlp/versions/1/infer", json=body, timeout=30)
        assert pinned.json()["model_version"] == "1"
        row = {"instances": [np.zeros((8, 8)).tolist()]}
        assert requests.post(f"{url}/v1/models/digits_mlp/labels/stable:predict", json=row,
                             timeout=30).status_code == 200

        with SteadyLoad(f"{url}/v2/models/digits_mlp/infer") as load:
            load.wait_for_version("2")
            _publish_copy(registry)  # version 3
            load.wait_for_version("3")
            tampered = _publish_copy(registry)  # version 4, corrupted after publishing
            Path(tampered.uri, "model.keras").write_bytes(b"tampered")
            deadline = time.time() + 30
            while not (_model_status("versioned", hosting)["load_error"] or "").count("4"):
                assert time.time() < deadline, "the tampered version was never tried"
                time.sleep(0.3)
            time.sleep(1)
        statuses = {status for status, _ in load.answers}
        versions = [v for _, v in load.answers]
        assert statuses == {200}, [a for a in load.answers if a[0] != 200][:5]
        assert len(load.answers) > 50 and "4" not in versions
        assert versions.index("3") > versions.index("2") and versions[-1] == "3"
        status = _model_status("versioned", hosting)
        assert "integrity check" in status["load_error"] and status["served_versions"] == [1, 2, 3]
    finally:
        serve.delete("versioned")


@pytest.mark.parametrize("hosting", ["deployment", "ingress"])
def test_replicas_scale_up_under_load_and_back_down(endpoint, tiny_job, hosting) -> None:
    """A model in a deployment of its own scales that deployment; a model in the ingress scales
    with the Ingress deployment."""
    import time

    from ray import serve

    from serve.app import Ingress
    from serve.deployments import ModelServer

    autoscaling = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
                   "metrics_interval_s": 0.5, "look_back_period_s": 2, "upscale_delay_s": 1,
                   "downscale_delay_s": 3}
    config = {"registry_root": tiny_job.registry.root,
              "models": [{"name": "digits_mlp", "hosting": hosting}]}
    if hosting == "deployment":
        model = ModelServer.options(name="digits_mlp", autoscaling_config=autoscaling,
                                    user_config={"max_batch_size": 1}).bind(
            "digits_mlp", tiny_job.registry.root, 64)
        app, scaled = Ingress.bind({"digits_mlp": model}, config), "digits_mlp"
    else:
        app = Ingress.options(autoscaling_config=autoscaling, user_config={
            "models": {"digits_mlp": {"max_batch_size": 1}}}).bind({}, config)
        scaled = "Ingress"
    serve.run(app, name="scaling", route_prefix="/scaling")

    def running() -> int:
        states = serve.status().applications["scaling"].deployments[scaled].replica_states
        return states.get("RUNNING", 0)

    def wait_for(count: int, timeout: float) -> list[int]:
        seen, deadline = [], time.time() + timeout
        while time.time() < deadline:
            seen.append(running())
            if seen[-1] == count:
                return seen
            time.sleep(0.5)
        raise AssertionError(f"never {count} running replicas of {scaled}; saw {seen[-10:]}")

    try:
        assert running() == 1
        with SteadyLoad(f"{endpoint}/scaling/v2/models/digits_mlp/infer", threads=8) as load:
            wait_for(2, timeout=90)
        assert {status for status, _ in load.answers} == {200}
        wait_for(1, timeout=90)  # load gone: back to min_replicas after the downscale delay
    finally:
        serve.delete("scaling")


def test_a_full_queue_answers_503_with_retry_after(endpoint, tiny_job) -> None:
    """Past max_queued_requests the model answers at once with 503 + Retry-After, never a hang."""

    from ray import serve

    from serve.app import Ingress
    from serve.deployments import ModelServer

    # One request at a time, one queued, and batches that wait 2 s: concurrent requests overflow.
    model = ModelServer.options(
        name="digits_mlp", max_ongoing_requests=1, max_queued_requests=1,
        user_config={"max_batch_size": 2, "batch_wait_timeout_s": 2.0}).bind(
        "digits_mlp", tiny_job.registry.root, 64)
    config = {"registry_root": tiny_job.registry.root, "models": [{"name": "digits_mlp"}],
              "retry_after_s": 3}
    serve.run(Ingress.bind({"digits_mlp": model}, config), name="tight", route_prefix="/tight")
    try:
        refused = _burst_refused(f"{endpoint}/tight", 8)
        assert refused.headers["Retry-After"] == "3" and "overloaded" in refused.json()["error"]
    finally:
        serve.delete("tight")


def _burst_refused(app_url: str, count: int) -> requests.Response:
    """Send ``count`` single-row predicts at once; some must pass, some be refused with 503: the
    first refusal."""
    from concurrent.futures import ThreadPoolExecutor

    body = {"instances": [np.zeros((8, 8)).tolist()]}
    with ThreadPoolExecutor(count) as pool:
        replies = list(pool.map(lambda _: requests.post(
            f"{app_url}/v1/models/digits_mlp:predict", json=body, timeout=60), range(count)))
    codes = sorted(r.status_code for r in replies)
    assert set(codes) == {200, 503} and codes.count(200) >= 1, codes
    return next(r for r in replies if r.status_code == 503)


def test_a_model_in_the_ingress_answers_503_past_max_pending_requests(endpoint, tiny_job) -> None:
    """hosting: ingress bounds each model's waiting requests itself (max_pending_requests)."""

    from ray import serve

    from serve.app import build_app

    settings = {"max_pending_requests": 1, "max_batch_size": 8, "batch_wait_timeout_s": 2.0}
    serve.run(build_app({"registry_root": tiny_job.registry.root, "retry_after_s": 3, "models": [
        {"name": "digits_mlp", "hosting": "ingress", "user_config": settings}]}),
        name="pending", route_prefix="/pending")
    try:
        refused = _burst_refused(f"{endpoint}/pending", 6)
        assert refused.headers["Retry-After"] == "3"
        assert "max_pending_requests=1" in refused.json()["error"]
    finally:
        serve.delete("pending")


def _kill_replica(app: str, deployment: str) -> str:
    """SIGKILL-equivalent for one replica of ``deployment`` (Serve's controller replaces it)."""
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith(f"SERVE_REPLICA::{app}#{deployment}#")]
    assert names, f"no replica of {app}/{deployment}"
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    return names[0]


def _wait_for(url: str, status: int, timeout: float = 120) -> requests.Response:
    import time

    deadline, reply = time.time() + timeout, None
    while time.time() < deadline:
        try:
            reply = requests.post(url, json={"instances": [np.zeros((8, 8)).tolist()]}, timeout=10)
            if reply.status_code == status:
                return reply
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} never answered {status}; last: {reply and reply.text}")


def test_a_bad_version_never_takes_a_restarted_replica_down(endpoint, tiny_job, tmp_path) -> None:
    """A version that loaded once and later cannot: a replica started after that serves the last
    version that loaded; with none left, that model answers 503 while the others keep serving."""
    from pathlib import Path

    from ray import serve

    from maas.registry import Registry
    from serve.app import build_app

    trained = Registry(tiny_job.registry.root).get("digits_mlp", 1)
    registry = Registry(str(tmp_path / "registry"))
    for name in ("digits_mlp", "other"):
        registry.publish(name, Path(trained.uri), {**trained.metadata, "labels": []})
    app = build_app({"registry_root": registry.root_uri, "models": [
        {"name": "digits_mlp", "hosting": "ingress"}, {"name": "other", "hosting": "ingress"}]})
    serve.run(app, name="fallback", route_prefix="/fallback")
    base = f"{endpoint}/fallback/v1/models"
    try:
        v2 = registry.publish("digits_mlp", Path(trained.uri), {**trained.metadata, "labels": []})
        ingress = serve.get_deployment_handle("Ingress", app_name="fallback")
        ingress.reconfigure.remote({"models": {"digits_mlp": {"refresh": 1}}}).result(timeout_s=60)
        assert _wait_for(f"{base}/digits_mlp:predict", 200).json() and registry.served_history(
            "digits_mlp") == [2, 1]
        Path(v2.uri, "model.keras").write_bytes(b"gone bad")  # loaded once, now cannot

        _kill_replica("fallback", "Ingress")
        _wait_for(f"{base}/other:predict", 200)  # the replacement replica is up
        _wait_for(f"{base}/digits_mlp:predict", 200)
        served = ingress.hosted_models.remote().result(timeout_s=30)["digits_mlp"]
        assert served["version"] == 1 and "the last that loaded" in served["load_error"]

        Path(registry.get("digits_mlp", 1).uri, "model.keras").write_bytes(b"gone bad too")
        _kill_replica("fallback", "Ingress")
        _wait_for(f"{base}/other:predict", 200)
        refused = _wait_for(f"{base}/digits_mlp:predict", 503)
        assert "is unavailable" in refused.json()["error"] and refused.headers["Retry-After"]
        health = requests.get(f"{endpoint}/fallback/healthz", timeout=30)
        assert health.status_code == 200 and "digits_mlp" in health.json()["unavailable"]
        assert requests.get(f"{endpoint}/v1/models/digits_mlp", timeout=30).status_code == 200
    finally:
        serve.delete("fallback")


def _replica_pids(app: str, deployment: str) -> list[int]:
    """Ray titles an actor's process after its class: ``ray::ServeReplica:<app>:<deployment>``."""
    from pathlib import Path

    title, found = f"ray::ServeReplica:{app}:{deployment}".encode(), []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().startswith(title):
                found.append(int(cmdline.parent.name))
        except OSError:  # the process ended while we looked
            pass
    return found


def _loads_tensorflow(pid: int) -> bool:
    """Whether TensorFlow's shared library is mapped into a process: a real import leaves it."""
    from pathlib import Path

    return "libtensorflow" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.parametrize("hosting", ["ingress", "deployment"])
def test_an_onnx_version_is_served_like_any_other_without_tensorflow(endpoint, tiny_job, tmp_path,
                                                                     hosting) -> None:
    """The ONNX variant of the trained model, on ONNX Runtime: both protocols, batching, status;
    the replica that hosts it never loads TensorFlow."""
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    from ray import serve

    from maas.data import load_dataset
    from maas.optimize.pipeline import run_recipe
    from maas.optimize.recipe import RecipeConfig
    from maas.registry import Registry
    from serve.app import build_app

    root = tmp_path / "registry"
    shutil.copytree(tiny_job.registry.root, root, ignore=shutil.ignore_patterns(".maas"))
    recipe = RecipeConfig.model_validate({"variants": [{"kind": "onnx"}],
                                          "evaluation": {"batch_sizes": [1], "repeats": 1, "warmup": 0}})
    assert not run_recipe(Registry(str(root)), "digits_mlp", "1", recipe, log=lambda *a, **k: None).refusals
    onnx_version = Registry(str(root)).versions("digits_mlp")[-1]  # earlier tests may have published more
    app_name = f"onnx-{hosting}"
    serve.run(build_app({"registry_root": str(root), "models": [
        {"name": "digits_mlp", "hosting": hosting, "user_config": {"runtime": "onnxruntime"}}]}),
        name=app_name, route_prefix=f"/{app_name}")
    url = f"{endpoint}/{app_name}"
    rows = load_dataset(tiny_job.data).x_test[:40]
    expected = np.asarray(_local_model(tiny_job)(rows, training=False))
    try:
        def one(i: int) -> np.ndarray:
            reply = requests.post(f"{url}/v1/models/digits_mlp:predict",
                                  json={"instances": rows[i:i + 1].tolist()}, timeout=30)
            assert reply.status_code == 200, reply.text
            return np.asarray(reply.json()["predictions"][0])

        with ThreadPoolExecutor(8) as pool:  # concurrent: they go through the batcher together
            served = np.stack(list(pool.map(one, range(len(rows)))))
        np.testing.assert_allclose(served, expected, atol=1e-5)
        request = {"id": "o1", "inputs": [{"name": "inputs", "shape": [3, 8, 8], "datatype": "FP32",
                                           "data": rows[:3].reshape(-1).tolist()}]}
        v2 = requests.post(f"{url}/v2/models/digits_mlp/infer", json=request, timeout=30).json()
        assert v2["model_version"] == str(onnx_version) and v2["id"] == "o1"
        np.testing.assert_allclose(np.asarray(v2["outputs"][0]["data"]).reshape(3, 10), expected[:3],
                                   atol=1e-5)
        bad = requests.post(f"{url}/v1/models/digits_mlp:predict", json={"instances": [[1, 2]]}, timeout=30)
        assert bad.status_code == 400 and "shape" in bad.json()["error"]
        status = _model_status(app_name, hosting)
        assert status["served_versions"] == [onnx_version] and status["runtime"] == "onnxruntime", status
        pids = _replica_pids(app_name, "Ingress" if hosting == "ingress" else "digits_mlp")
        assert pids and not any(_loads_tensorflow(pid) for pid in pids)
        assert all(_loads_tensorflow(pid) for pid in _replica_pids("maas", "Ingress"))  # the check bites
    finally:
        serve.delete(app_name)
