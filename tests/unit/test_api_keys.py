"""Scoped API keys, attacked: no key, a wrong or made-up key, a key outside its models, a revoked
key (revoked while the checker runs), a key over its rate; and the store never holds a usable key."""

from pathlib import Path

import pytest

from maas.cli import main as maas_main
from maas.errors import ConfigError, RateLimitError, RequestError
from maas.serving.auth import KeyChecker
from maas.serving.keys import KeyFile


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture
def store(tmp_path: Path) -> KeyFile:
    return KeyFile(str(tmp_path / ".maas" / "api_keys.json"))


def test_the_store_holds_hashes_never_keys(store: KeyFile) -> None:
    record, key = store.create(["digits_mlp"], label="ci")
    text = Path(store.path).read_text()
    secret = key.split(".", 1)[1]
    assert key.startswith(f"maas_{record.id}.") and secret not in text and record.hash in text


def test_a_scoped_key_calls_its_models_and_nothing_else(store: KeyFile) -> None:
    _, key = store.create(["digits_mlp"])
    _, admin = store.create(["*"], role="admin")
    checker = KeyChecker(store.path)
    assert checker.authorize(bearer(key), "digits_mlp") == key.split(".")[0].removeprefix("maas_")
    with pytest.raises(RequestError, match="may not call model 'other'") as outside:
        checker.authorize(bearer(key), "other")
    assert outside.value.status == 403
    assert checker.authorize({"x-api-key": admin}, "other")


@pytest.mark.parametrize(("headers", "status", "message"), [
    ({}, 401, "missing API key"),
    ({"authorization": "Bearer nope"}, 403, "not accepted"),
    ({"authorization": "Bearer maas_deadbeef.guess"}, 403, "not accepted"),
])
def test_missing_wrong_and_made_up_keys_are_refused(store: KeyFile, headers, status, message) -> None:
    record, key = store.create(["*"])
    forged = f"maas_{record.id}.not-the-secret"
    checker = KeyChecker(store.path)
    with pytest.raises(RequestError, match=message) as refused:
        checker.authorize(headers, "m")
    assert refused.value.status == status
    with pytest.raises(RequestError, match="not accepted"):
        checker.authorize(bearer(forged), "m")  # a real id with a guessed secret


def test_revocation_reaches_a_running_checker_without_a_restart(store: KeyFile) -> None:
    record, key = store.create(["*"])
    clock = Clock()
    checker = KeyChecker(store.path, clock=clock)
    assert checker.authorize(bearer(key), "m") == record.id
    store.revoke(record.id)
    clock.now += 1.5  # the checker looks at the file at most once a second
    with pytest.raises(RequestError, match=f"API key {record.id} was revoked") as refused:
        checker.authorize(bearer(key), "m")
    assert refused.value.status == 403


def test_a_key_over_its_rate_gets_429_with_the_wait(store: KeyFile) -> None:
    _, key = store.create(["*"], rate_per_s=2)
    clock = Clock()
    checker = KeyChecker(store.path, clock=clock)
    for _ in range(2):
        checker.authorize(bearer(key), "m")
    with pytest.raises(RateLimitError, match="over its rate of 2 requests/s") as limited:
        checker.authorize(bearer(key), "m")
    assert limited.value.status == 429 and 0 < limited.value.retry_after_s <= 0.5
    clock.now += 0.5  # one token back
    checker.authorize(bearer(key), "m")


def test_without_keys_predict_is_open_and_plain_keys_still_work(store: KeyFile) -> None:
    assert KeyChecker(store.path).authorize({}, "m") is None
    checker = KeyChecker(store.path, plain_keys=["s3cret"])
    assert checker.authorize(bearer("s3cret"), "any") == "plain"
    with pytest.raises(RequestError, match="not accepted"):
        checker.authorize(bearer("maas_x.y"), "any")


def test_bad_key_requests_are_refused(store: KeyFile) -> None:
    with pytest.raises(ConfigError, match="role 'root'"):
        store.create(["*"], role="root")
    with pytest.raises(ConfigError, match="needs the models"):
        store.create([])
    with pytest.raises(ConfigError, match="no key with id 'nope'"):
        store.revoke("nope")


def test_keys_cli_creates_lists_and_revokes(tmp_path: Path, capsys) -> None:
    base = ["--registry", str(tmp_path / "registry"), "keys"]
    assert maas_main([*base, "create", "--models", "digits_mlp,other", "--rate", "10"]) == 0
    out = capsys.readouterr().out
    key = next(line for line in out.splitlines() if line.startswith("maas_"))
    key_id = key.split(".")[0].removeprefix("maas_")
    assert maas_main([*base, "list"]) == 0
    listing = capsys.readouterr().out
    assert key_id in listing and "active" in listing and key.split(".")[1] not in listing
    assert maas_main([*base, "revoke", key_id]) == 0
    assert maas_main([*base, "list"]) == 0 and "revoked" in capsys.readouterr().out
    assert maas_main([*base, "revoke", "nope"]) == 2


def test_the_claimed_key_id_is_read_without_the_secret() -> None:
    from maas.serving.auth import claimed_key_id

    assert claimed_key_id({"authorization": "Bearer maas_abc123.s3cret"}) == "abc123"
    assert claimed_key_id({"x-api-key": "maas_abc123.s3cret"}) == "abc123"
    assert claimed_key_id({"x-api-key": "plain-key"}) is None
    assert claimed_key_id({}) is None


@pytest.mark.parametrize(("role", "models", "model", "status", "message"), [
    ("predict", ["*"], "m", 403, "has role predict; this route needs role admin"),
    ("admin", ["other"], "m", 403, "may not manage model 'm'"),
    ("admin", ["m"], "m", None, None),
    ("admin", ["*"], "m", None, None),
    ("admin", ["other"], None, None, None),  # a route over every model: filtered by scope later
])
def test_admin_routes_take_only_admin_keys_within_their_models(store: KeyFile, role, models, model,
                                                              status, message) -> None:
    record, key = store.create(models, role=role)
    checker = KeyChecker(store.path)
    if status is None:
        assert checker.authorize_admin(bearer(key), model) == record
        return
    with pytest.raises(RequestError, match=message) as refused:
        checker.authorize_admin(bearer(key), model)
    assert refused.value.status == status


def test_admin_routes_stay_closed_without_admin_keys(store: KeyFile) -> None:
    """Predict is open with no keys at all; admin never is, and plain keys only predict."""
    open_checker = KeyChecker(store.path)
    assert open_checker.authorize({}, "m") is None
    with pytest.raises(RequestError, match="missing API key") as missing:
        open_checker.authorize_admin({}, "m")
    assert missing.value.status == 401
    with pytest.raises(RequestError, match="need a scoped API key with role admin") as none:
        open_checker.authorize_admin(bearer("anything"), "m")
    assert none.value.status == 403
    record, key = store.create(["*"], role="admin")
    checker = KeyChecker(store.path, plain_keys=["s3cret"])
    with pytest.raises(RequestError, match="plain API keys .* may only predict") as plain:
        checker.authorize_admin(bearer("s3cret"), "m")
    assert plain.value.status == 403
    store.revoke(record.id)
    checker.refresh(force=True)
    with pytest.raises(RequestError, match="was revoked"):
        checker.authorize_admin(bearer(key), "m")


def test_admin_keys_have_a_rate_too(store: KeyFile) -> None:
    _, key = store.create(["*"], role="admin", rate_per_s=1)
    checker = KeyChecker(store.path, clock=Clock())
    checker.authorize_admin(bearer(key), "m")
    with pytest.raises(RateLimitError, match="over its rate"):
        checker.authorize_admin(bearer(key), None)
