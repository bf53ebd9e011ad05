"""The one error root: what each kind maps to, errors as data across a Serve handle, and CLIs
that turn a MaasError into a message but let a real bug keep its traceback."""

import pytest

from maas.errors import (
    ClusterError,
    ConfigError,
    DataError,
    IntegrityError,
    InterruptedRunError,
    MaasError,
    ModelError,
    OverloadError,
    RegistryError,
    RequestError,
    StorageError,
    error_reply,
    raise_if_error,
)

KINDS = [(ConfigError, 400, 2), (DataError, 400, 2), (ModelError, 422, 2), (RegistryError, 404, 1),
         (IntegrityError, 409, 1), (RequestError, 400, 2), (OverloadError, 503, 1),
         (ClusterError, 503, 1), (InterruptedRunError, 503, 130), (StorageError, 507, 1)]


@pytest.mark.parametrize(("kind", "status", "exit_code"), KINDS)
def test_every_kind_is_a_maas_error_with_its_status_and_exit_code(kind, status, exit_code) -> None:
    error = kind("what was wrong")
    assert isinstance(error, MaasError)
    assert (error.status, error.exit_code, str(error)) == (status, exit_code, "what was wrong")


def test_kinds_refine_the_builtins_older_code_catches() -> None:
    assert issubclass(ConfigError, ValueError) and issubclass(DataError, ValueError)
    assert issubclass(RegistryError, LookupError) and issubclass(IntegrityError, RegistryError)


def test_an_instance_can_name_a_finer_status() -> None:
    assert RequestError("too big", status=413).status == 413
    assert RequestError("bad").status == 400


@pytest.mark.parametrize("error", [RequestError("row 3 holds 'x'", status=404),
                                   OverloadError("queue full"), IntegrityError("tampered")])
def test_errors_cross_a_handle_as_data_and_come_back_as_the_same_kind(error: MaasError) -> None:
    reply = error_reply(error)
    assert set(reply) == {"error", "status", "kind"} and isinstance(reply["status"], int)
    with pytest.raises(type(error)) as raised:
        raise_if_error(dict(reply))
    assert str(raised.value) == str(error) and raised.value.status == error.status


def test_a_normal_reply_passes_through() -> None:
    reply = {"outputs": [[0.1, 0.9]], "version": 3}
    assert raise_if_error(reply) is reply


def test_the_cli_turns_a_user_error_into_a_message_and_its_exit_code(monkeypatch, capsys) -> None:
    from maas import cli

    def fail(args):
        raise ClusterError("could not reach the Ray dashboard at http://127.0.0.1:1")

    monkeypatch.setattr(cli, "run", fail)
    assert cli.main(["models", "list"]) == 1
    captured = capsys.readouterr()
    assert "error: could not reach the Ray dashboard" in captured.err and "Traceback" not in captured.err


def test_the_cli_lets_a_real_bug_keep_its_traceback(monkeypatch) -> None:
    from maas import cli

    def bug(args):
        raise KeyError("a bug, not a user's mistake")

    monkeypatch.setattr(cli, "run", bug)
    with pytest.raises(KeyError):
        cli.main(["models", "list"])
