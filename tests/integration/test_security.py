"""Every attack of issue 13, tried; each is refused with the right status or message, and what is
already serving keeps serving. The serving-side ones attack one running app, deployed from a
config as shipped (``serve deploy``): ``digits_mlp`` hosted in the ingress, version 1 signed and
encrypted at rest, scoped keys, a plain key, admin routes, audit at 100%.

==========================================  =================================  ==========================
attack                                      refused with                       test
==========================================  =================================  ==========================
no key; a made-up or guessed key            401; 403 (predict)                 ``test_predict_keys_...``
a key used outside its models               403, predict and admin routes      same, ``test_admin_...``
a revoked key                               403 within ~1 s, no restart        same
over-rate requests                          429 with ``Retry-After``           ``test_predict_keys_...``
no key, a plain, predict-role or revoked    401 / 403, each refusal audited    ``test_admin_routes_...``
key on an admin route
a tampered model file                       "fails its integrity check"        ``test_an_attacked_...``
tampered metadata                           "signature does not match"         same
re-signed with a stranger's key             "not by the trusted key"           same
unsigned                                    "is not signed"                    same
a wrong decryption key                      "cannot be decrypted", both ids    same [1]
a code-carrying model file (Lambda layer    "not an allowed" Keras class,      ``test_a_code_carrying_...``
naming an importable module), signed        the module never imported          [2]
an edited and a deleted audit line          named by file and line in          ``test_audit_...`` [3]
                                            ``GET /v1/admin/audit``
plain HTTP to the HTTPS port; a client      refused; the client-certificate    ``tests/e2e/test_tls.py``
that does not trust the CA; client certs    limit shown                        [4]
a node or driver without Ray's TLS          cannot join                        ``tests/e2e/test_ray_tls.py``
==========================================  =================================  ==========================

In every attack on a model file, requests run throughout and every one is answered by version 1.

[1] ``tests/unit/test_encryption.py``: nothing of a model reaches a serving node's disk; a missing
    key; files swapped between names.
[2] ``tests/unit/test_model_safety.py``: plain Keras safe mode does run the marker; the other ways
    of naming code (function references, registered objects, foreign modules, ``.h5``).
[3] ``tests/unit/test_audit.py``: a deleted first line, a re-hashed edit, a stray line; ``python -m
    maas audit verify`` exits 1 naming the line.
[4] TLS needs a Serve of its own, started with certificates, and Ray's TLS a head of its own: they
    cannot share this session's cluster.

The same refusals without Serve, case by case: ``tests/unit/test_signing.py``,
``tests/unit/test_api_keys.py``.
"""

import json
import os
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.conftest import SteadyLoad
from tests.unit.test_model_safety import MARKER_MODULE, _lambda_attack

pytestmark = pytest.mark.integration

APP = "security"
MODEL = "digits_mlp"
ROW = {"instances": [[[0.0] * 8] * 8]}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Secured:
    url: str
    root: Path
    work: Path
    keys: dict[str, str]  # name -> key (shown once at creation)
    ids: dict[str, str]  # name -> key id
    signer: object
    stranger: object
    master: object
    other_master: object
    source: Path  # the trained version's plaintext files
    runtime_env: dict = field(default_factory=dict)

    def registry(self, signer: object = "legit", master: object = "legit"):
        from maas.registry import Registry

        return Registry(str(self.root), signer=self.signer if signer == "legit" else signer,
                        encryption_key=self.master if master == "legit" else master)

    def publish(self, source: Path | None = None, **registry) -> int:
        """A new version from the trained model's files (or ``source``), signed and encrypted
        with the legitimate keys unless told otherwise."""
        metadata = json.loads((self.source / "metadata.json").read_text())
        return self.registry(**registry).publish(MODEL, source or self.source,
                                                 {**metadata, "labels": []}).version

    def predict(self, key: str | None = "predict") -> requests.Response:
        headers = bearer(self.keys[key]) if key else {}
        return requests.post(f"{self.url}/v1/models/{MODEL}:predict", json=ROW, headers=headers, timeout=30)

    def admin(self, method: str, path: str, key: str | None = "admin", **kwargs) -> requests.Response:
        headers = bearer(self.keys[key]) if key else {}
        return requests.request(method, f"{self.url}{path}", headers=headers, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def secured(serve_http, trained, tiny_job, tmp_path_factory) -> Secured:
    """The app under attack, deployed from a config through the Serve controller (what
    `serve deploy` does, without the dashboard this test cluster runs without)."""
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from maas.artifacts.encryption import MasterKey, generate_master_key
    from maas.artifacts.signing import Signer, generate_keys
    from maas.registry import Registry
    from maas.serving.keys import KeyFile, keys_path

    work = tmp_path_factory.mktemp("security")
    private, public = generate_keys(work / "keys")
    stranger, _ = generate_keys(work / "stranger")
    trained_version = Registry(tiny_job.registry.root).get(MODEL, 1)
    source = work / "trained"
    shutil.copytree(trained_version.uri, source)
    (work / "marker").mkdir()
    (work / "marker" / f"{MARKER_MODULE}.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(work / 'MARKER')!r}).write_text('imported')\n"
        "def payload(x):\n"
        f"    pathlib.Path({str(work / 'MARKER')!r}).write_text('called')\n"
        "    return x\n")
    secured = Secured(
        url=f"http://{serve_http}/{APP}", root=work / "registry", work=work, keys={}, ids={},
        signer=Signer.load(str(private)), stranger=Signer.load(str(stranger)),
        master=MasterKey.load(str(generate_master_key(work / "master.key"))),
        other_master=MasterKey.load(str(generate_master_key(work / "other-master.key"))),
        source=source,
        # the replicas' master key, and the marker module importable there, as on a real node
        runtime_env={"env_vars": {"MAAS_MASTER_KEY_FILE": str(work / "master.key"),
                                  "PYTHONPATH": f"{work / 'marker'}:${{PYTHONPATH}}"}})
    assert secured.publish() == 1  # signed and encrypted
    store = KeyFile(keys_path(str(secured.root)))
    for name, models, role, rate in [("predict", [MODEL], "predict", None),
                                     ("foreign", ["other_model"], "predict", None),
                                     ("limited", [MODEL], "predict", 2),
                                     ("revoked", [MODEL], "predict", None),
                                     ("admin", [MODEL], "admin", None),
                                     ("admin_other", ["other_model"], "admin", None),
                                     ("admin_all", ["*"], "admin", None)]:
        record, secured.keys[name] = store.create(models, role=role, rate_per_s=rate, label=name)
        secured.ids[name] = record.id
    secured.keys["plain"] = "plain-s3cret"
    app = {"name": APP, "route_prefix": f"/{APP}", "import_path": "serve.app:build_app",
           "runtime_env": secured.runtime_env,
           "args": {"registry_root": str(secured.root), "verify_key": str(public),
                    "api_keys": [secured.keys["plain"]], "audit_sample_rate": 1.0,
                    "models": [{"name": MODEL, "hosting": "ingress",
                                "user_config": {"versions": {"specific": [1]}}}]},
           "deployments": [{"name": "Ingress", "num_replicas": 1}]}
    client = _get_global_client()
    client.deploy_apps(ServeDeploySchema.model_validate({"applications": [app]}), _blocking=True)
    yield secured
    client.deploy_apps(ServeDeploySchema.model_validate({"applications": []}))
    serve.delete(APP)


def _entries(secured: Secured, action: str) -> list[dict]:
    from maas import audit

    return audit.entries(str(secured.root), action=action)


def _wait_for_entries(secured: Secured, action: str, match, count: int = 1) -> list[dict]:
    """The replica writes predictions once a second: wait for ``count`` matching entries."""
    deadline, found = time.time() + 10, []
    while time.time() < deadline:
        found = [e for e in _entries(secured, action) if match(e)]
        if len(found) >= count:
            return found
        time.sleep(0.3)
    raise AssertionError(f"fewer than {count} {action} entries: {found}")


# --- keys ---------------------------------------------------------------------------------------


def test_predict_keys_missing_wrong_plain_foreign_over_rate_and_revoked(secured) -> None:
    from maas.serving.keys import KeyFile, keys_path

    assert secured.predict(key=None).status_code == 401
    wrong = requests.post(f"{secured.url}/v1/models/{MODEL}:predict", json=ROW, timeout=30,
                          headers=bearer(f"maas_{secured.ids['predict']}.guessed"))
    assert wrong.status_code == 403 and "not accepted" in wrong.json()["error"]
    assert secured.predict("plain").status_code == 200  # the older plain keys still predict
    outside = secured.predict("foreign")
    assert outside.status_code == 403 and f"may not call model '{MODEL}'" in outside.json()["error"]
    answers = [secured.predict("limited") for _ in range(6)]  # 2/s with a burst of 2
    assert answers[0].status_code == 200
    limited = [a for a in answers if a.status_code == 429]
    assert limited and int(limited[0].headers["Retry-After"]) >= 1
    assert secured.predict("revoked").status_code == 200
    KeyFile(keys_path(str(secured.root))).revoke(secured.ids["revoked"])
    deadline = time.time() + 10
    while time.time() < deadline and secured.predict("revoked").status_code == 200:
        time.sleep(0.3)
    revoked = secured.predict("revoked")
    assert revoked.status_code == 403 and "was revoked" in revoked.json()["error"]
    assert secured.predict().status_code == 200  # everyone else goes on
    assert requests.get(f"{secured.url}/v2/health/ready", timeout=30).status_code == 200  # health stays open
    # each answer is in the trail by key id, with its status; no key secret is anywhere in it
    limited_id = secured.ids["limited"]
    mine = _wait_for_entries(secured, "prediction", lambda e: e["key_id"] == limited_id, count=6)
    assert {200, 429} <= {e["status"] for e in mine}
    ok = next(e for e in mine if e["status"] == 200)
    assert ok["model"] == MODEL and ok["version"] == "1" and ok["rows"] == 1 and ok["latency_ms"] > 0
    assert "request_body" not in ok  # payloads are off by default
    _wait_for_entries(secured, "prediction", lambda e: e["key_id"] == secured.ids["revoked"]
                      and e["status"] == 403)


def test_admin_routes_refuse_every_key_but_an_admin_key_within_its_models(secured) -> None:
    refresh = f"/v1/admin/models/{MODEL}:refresh"
    cases = [
        ("post", refresh, None, 401, "missing API key"),
        ("post", refresh, "plain", 403, "may only predict"),
        ("post", refresh, "predict", 403, "has role predict"),
        ("post", refresh, "revoked", 403, "was revoked"),
        ("post", refresh, "admin_other", 403, f"may not manage model '{MODEL}'"),
        ("post", f"/v2/repository/models/{MODEL}/load", "admin_other", 403, "may not manage"),
        ("get", f"/v1/admin/models/{MODEL}", "predict", 403, "has role predict"),
        ("get", f"/v1/admin/audit?model={MODEL}", "admin_other", 403, "may not manage"),
        ("get", "/v1/admin/audit", None, 401, "missing API key"),
        ("post", "/v2/repository/index", "predict", 403, "has role predict"),
    ]
    for method, path, key, status, message in cases:
        reply = secured.admin(method, path, key=key)
        assert reply.status_code == status and message in reply.json()["error"], (path, key, reply.text)
    assert secured.admin("post", "/v1/admin/models/nope:refresh", key="admin_all").status_code == 404
    bad = secured.admin("get", "/v1/admin/audit?limit=0", key="admin_all")
    assert bad.status_code == 400 and "limit" in bad.json()["error"]
    # each refusal is in the trail under the id the key claimed; nothing was changed
    refused = _entries(secured, "admin.refused")
    assert {e["key_id"] for e in refused} >= {secured.ids[k] for k in ("predict", "revoked", "admin_other")}
    assert {e["status"] for e in refused} >= {401, 403, 404, 400}
    assert not _entries(secured, "serve.settings_changed")
    assert secured.predict().status_code == 200


# --- model files --------------------------------------------------------------------------------


def _tampered_file(secured: Secured) -> int:
    version = secured.publish()
    Path(secured.root, MODEL, str(version), "model.keras").write_bytes(b"tampered")
    return version


def _tampered_metadata(secured: Secured) -> int:
    version = secured.publish()
    path = Path(secured.root, MODEL, str(version), "metadata.json")
    metadata = json.loads(path.read_text())
    metadata["metrics"] = {**metadata.get("metrics", {}), "test_accuracy": 0.999}
    path.write_text(json.dumps(metadata))
    return version


def _unsigned(secured: Secured) -> int:
    version = secured.publish(signer=None)
    assert "signature" not in secured.registry().get(MODEL, version).metadata
    return version


ATTACKS = {
    "tampered file": (_tampered_file, "fails its integrity check"),
    "tampered metadata": (_tampered_metadata, "signature does not match its metadata"),
    "re-signed with a stranger's key": (lambda s: s.publish(signer=s.stranger), "not by the trusted key"),
    "unsigned": (_unsigned, "is not signed"),
    "wrong decryption key": (lambda s: s.publish(master=s.other_master), "cannot be decrypted with"),
}


def _pin_and_expect_refusal(secured: Secured, version: int, message: str) -> dict:
    """Pin ``version`` through the admin route while traffic runs: refused with ``message``,
    version 1 answering every request throughout; returns the admin route's answer."""
    headers = bearer(secured.keys["predict"])
    with SteadyLoad(f"{secured.url}/v2/models/{MODEL}/infer", threads=2, headers=headers) as load:
        load.wait_for_version("1")
        reply = secured.admin("post", f"/v1/admin/models/{MODEL}:versions", json={"versions": str(version)})
        time.sleep(0.5)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["applied"] and answer["settings"]["versions"] == {"specific": [version]}
    status = answer["status"]
    assert status["served_versions"] == [1] and status["version"] == 1, status
    assert message in status["load_error"] and f"version {version}" in status["load_error"], status
    assert set(load.answers) == {(200, "1")}, [a for a in load.answers if a != (200, "1")][:5]
    _wait_for_entries(secured, "version.refused", lambda e: e.get("versions") == [version])
    return answer


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_an_attacked_version_is_refused_and_the_served_one_keeps_answering(secured, attack) -> None:
    publish, message = ATTACKS[attack]
    _pin_and_expect_refusal(secured, publish(secured), message)


def test_a_code_carrying_version_is_refused_unrun_even_when_properly_signed(secured) -> None:
    """An insider with the signing and master keys publishes a .keras whose config names a Lambda
    layer calling a module importable on the node: refused before Keras reads it."""
    import ray

    source = secured.work / "crafted"
    shutil.copytree(secured.source, source)
    with zipfile.ZipFile(secured.source / "model.keras") as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    config = _lambda_attack(json.loads(files["config.json"]))
    with zipfile.ZipFile(source / "model.keras", "w") as archive:
        for name, content in files.items():
            archive.writestr(name, json.dumps(config) if name == "config.json" else content)
    version = secured.publish(source)
    _pin_and_expect_refusal(secured, version, "not an allowed")
    assert not (secured.work / "MARKER").exists()

    @ray.remote(num_cpus=0)
    def importable(name: str) -> bool:  # the check bites: the module was there to import
        import importlib.util

        return importlib.util.find_spec(name) is not None

    assert ray.get(importable.options(runtime_env=secured.runtime_env).remote(MARKER_MODULE))


# --- what an admin key may do -------------------------------------------------------------------


def test_an_admin_key_swaps_rolls_back_and_refreshes_over_http(secured) -> None:
    import tritonclient.http as httpclient

    good = secured.publish()
    base = f"/v1/admin/models/{MODEL}"
    swapped = secured.admin("post", f"{base}:versions", json={"versions": "latest", "label": ["stable=1"]})
    assert swapped.status_code == 200 and swapped.json()["status"]["served_versions"] == [1, good]
    assert secured.predict().headers["X-Model-Version"] == str(good)
    back = secured.admin("post", f"{base}:rollback", json={"to": 1})
    assert back.status_code == 200 and back.json()["status"]["served_versions"] == [1]
    assert secured.predict().headers["X-Model-Version"] == "1"
    nothing_older = secured.admin("post", f"{base}:rollback")
    assert nothing_older.status_code == 400 and "no older version" in nothing_older.json()["error"]
    refreshed = secured.admin("post", f"{base}:refresh")
    assert refreshed.status_code == 200 and refreshed.json()["settings"]["refresh"] == 1
    shown = secured.admin("get", base).json()
    assert shown["settings"]["versions"] == {"specific": [1]} and shown["settings"]["refresh"] == 1
    assert shown["status"]["label_map"] == {"stable": 1}
    # Triton's model repository extension, through tritonclient itself
    client = httpclient.InferenceServerClient(secured.url.removeprefix("http://"))
    client.load_model(MODEL, headers=bearer(secured.keys["admin"]))
    index = client.get_model_repository_index(headers=bearer(secured.keys["admin"]))
    assert index == [{"name": MODEL, "version": "1", "state": "READY", "reason": ""}]
    assert client.get_model_repository_index(headers=bearer(secured.keys["admin_other"])) == []
    changes = _entries(secured, "serve.settings_changed")  # every change here came over HTTP
    assert [e["command"] for e in changes[-4:]] == ["versions", "rollback", "refresh", "refresh"]
    assert {e["key_id"] for e in changes} == {secured.ids["admin"]}
    assert changes[-1]["route"].endswith(f"/v2/repository/models/{MODEL}/load")


# --- the audit trail ----------------------------------------------------------------------------


def test_audit_over_http_names_keys_never_secrets_and_finds_an_edited_and_a_deleted_line(
        secured) -> None:
    from maas import audit

    reply = secured.admin("get", "/v1/admin/audit?action=serve.&limit=3", key="admin_all")
    assert reply.status_code == 200 and reply.json()["chain"]["problems"] == []
    assert [e["command"] for e in reply.json()["entries"]] == ["rollback", "refresh", "refresh"]
    scoped = secured.admin("get", "/v1/admin/audit?action=key.", key="admin").json()["entries"]
    assert scoped == []  # key entries are about no model: only a key over every model reads them
    trail = "".join(p.read_text() for p in Path(audit.audit_root(str(secured.root))).rglob("*.jsonl"))
    for name, key in secured.keys.items():
        assert key.rsplit(".", 1)[-1] not in trail, name
    # this process's own file: nothing else writes it while the test runs
    ours, = Path(audit.audit_root(str(secured.root))).rglob(f"*-{os.getpid()}.jsonl")
    original = ours.read_text()
    lines = original.splitlines(keepends=True)
    where = f"{ours.parent.name}/{ours.name}"
    try:
        edited = json.loads(lines[1])
        edited["actor"] = "someone-else"
        ours.write_text(lines[0] + json.dumps(edited) + "\n" + "".join(lines[2:]))
        problems = secured.admin("get", "/v1/admin/audit", key="admin_all").json()["chain"]["problems"]
        assert problems == [f"{where} line 2: the entry was edited"]
        ours.write_text(lines[0] + "".join(lines[2:]))  # line 2 deleted
        problems = secured.admin("get", "/v1/admin/audit", key="admin_all").json()["chain"]["problems"]
        assert problems == [f"{where} line 2: the previous entry was deleted or changed"]
        assert secured.predict().status_code == 200
    finally:
        ours.write_text(original)
    assert secured.admin("get", "/v1/admin/audit", key="admin_all").json()["chain"]["problems"] == []
    reads = [e for e in _entries(secured, "admin.read") if e["route"].endswith("/v1/admin/audit")]
    assert reads and {e["key_id"] for e in reads} == {secured.ids["admin_all"], secured.ids["admin"]}
