"""HTTPS on the Serve port, as configs/serve/tls.yaml ships it: `serve run` on a Ray of its own
with a certificate from a throw-away CA. The client that trusts the CA gets answers; plain HTTP
to the port and a client that does not trust the CA are refused. And what Ray 2.60 does not do:
require a client certificate (so mutual TLS belongs in a proxy in front; README "Security")."""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent


def _certificate(subject: str, key, issuer_name, issuer_key, ca: bool = False, ips: tuple[str, ...] = ()):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ips:
        names = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in dict.fromkeys(ips)]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def write_pki(directory: Path, prefix: str = "", ips: tuple[str, ...] = ("127.0.0.1",)) -> dict[str, Path]:
    """A CA, a server certificate for ``ips`` signed by it, and a client certificate."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    def pem_key(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _certificate(f"{prefix}test CA", ca_key, None, None, ca=True)
    server = _certificate(ips[0], server_key, ca.subject, ca_key, ips=ips)
    client = _certificate("client", client_key, ca.subject, ca_key)
    files = {"ca": ca, "server": server, "client": client}
    paths = {}
    for name, cert in files.items():
        paths[name] = directory / f"{prefix}{name}.crt"
        paths[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    for name, key in {"server_key": server_key, "client_key": client_key}.items():
        paths[name] = directory / f"{prefix}{name}.pem"
        paths[name].write_bytes(pem_key(key))
    return paths


def publish_model(root: str) -> None:
    from maas.config import ModelConfig, OptimizerConfig
    from maas.data import DataSchema
    from maas.models import build_model, compile_model
    from maas.registry import Registry
    from maas.tfkeras import save_model

    schema = DataSchema(input_shape=(8, 8), classes=list(range(10)), source="tls-test")
    model = build_model(ModelConfig(hidden_units=[16]), schema, np.zeros((8, 8)), np.ones((8, 8)))
    compile_model(model, OptimizerConfig())
    with tempfile.TemporaryDirectory() as staged:
        save_model(model, f"{staged}/model.keras")
        Registry(root).publish("digits_mlp", staged, {"schema": schema.to_dict()})


@pytest.fixture(scope="module")
def https_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Path]]]:
    work = tmp_path_factory.mktemp("tls")
    pki = write_pki(work)
    publish_model(str(work / "registry"))
    config = yaml.safe_load((REPO / "configs/serve/tls.yaml").read_text())
    port = free_port()
    config["http_options"].update(port=port, ssl_certfile=str(pki["server"]),
                                  ssl_keyfile=str(pki["server_key"]), ssl_ca_certs=str(pki["ca"]))
    config["applications"][0]["args"]["registry_root"] = str(work / "registry")
    (work / "tls.yaml").write_text(yaml.safe_dump(config))
    env = {key: value for key, value in os.environ.items()
           if key not in ("RAY_ADDRESS", "RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_ENABLE_DIRECT_INGRESS")}
    env["RAY_AUTH_MODE"] = "disabled"
    log = open(work / "serve.log", "w")
    # --address local: a Ray of its own; a new session, so the whole group can be stopped
    server = subprocess.Popen([str(BIN / "serve"), "run", "--address", "local", str(work / "tls.yaml")],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                              preexec_fn=_let_ctrl_c_through)
    url = f"https://127.0.0.1:{port}"
    try:
        _wait_until_answering(url, pki["ca"], server, work / "serve.log")
        yield url, pki
    finally:
        # Ctrl-C to `serve run` alone: it shuts Serve and its own Ray down. Sent to the whole
        # group, Ray's processes die under it and it waited out the full timeout (120 s in CI).
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(server.pid, signal.SIGKILL)  # whatever of its session is left
        except ProcessLookupError:
            pass


def _let_ctrl_c_through() -> None:
    # A command started in the background by a script (as CI runs the suite) inherits SIGINT
    # ignored, and Python then never raises KeyboardInterrupt: `serve run` ignored the teardown's
    # Ctrl-C and the fixture waited out its 60 s in every CI run.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_until_answering(url: str, ca: Path, server: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + 240
    while time.time() < deadline:
        if server.poll() is not None:
            pytest.fail(f"serve run exited:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/v1/models/digits_mlp", verify=str(ca), timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    pytest.fail(f"HTTPS endpoint never answered:\n{log.read_text()[-3000:]}")


BODY = {"instances": [np.zeros((8, 8)).tolist()]}


def test_a_client_that_trusts_the_ca_gets_answers_over_https(https_server) -> None:
    url, pki = https_server
    reply = requests.post(f"{url}/v1/models/digits_mlp:predict", json=BODY, verify=str(pki["ca"]), timeout=30)
    assert reply.status_code == 200 and len(reply.json()["predictions"][0]) == 10


def test_plain_http_to_the_https_port_is_refused(https_server) -> None:
    url, _ = https_server
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(f"{url.replace('https', 'http')}/v1/models/digits_mlp:predict", json=BODY, timeout=10)


def test_a_client_that_does_not_trust_the_servers_ca_refuses_it(https_server, tmp_path) -> None:
    url, _ = https_server
    stranger = write_pki(tmp_path, prefix="stranger-")["ca"]
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{url}/v1/models/digits_mlp", verify=str(stranger), timeout=10)


def test_ray_does_not_require_a_client_certificate_even_with_ssl_ca_certs(https_server) -> None:
    """The limit README "Security" documents: with ssl_ca_certs set, a client without a
    certificate is still served (uvicorn's ssl_cert_reqs stays CERT_NONE). If this starts to
    fail, Ray enforces client certificates: update configs/serve/tls.yaml and the README."""
    url, pki = https_server
    without = requests.get(f"{url}/v1/models/digits_mlp", verify=str(pki["ca"]), timeout=10)
    assert without.status_code == 200
    with_cert = requests.get(f"{url}/v1/models/digits_mlp", verify=str(pki["ca"]), timeout=10,
                             cert=(str(pki["client"]), str(pki["client_key"])))
    assert with_cert.status_code == 200
