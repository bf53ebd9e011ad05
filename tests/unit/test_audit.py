"""The audit trail: what is recorded, that editing or deleting a line is found, and that a key
never reaches it (only its id)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maas import audit
from maas.cli import main as cli_main
from maas.registry import Registry
from maas.serving.keys import KeyFile, keys_path


@pytest.fixture(autouse=True)
def fresh_writers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own writers (the process keeps one per audit directory)."""
    monkeypatch.setattr(audit, "_LOGS", {})


def audit_files(root: Path) -> list[Path]:
    return sorted((root / ".maas" / "audit").rglob("*.jsonl"))


def write_entries(root: Path, count: int) -> Path:
    log = audit.audit_log(audit.audit_root(str(root)))
    for number in range(count):
        log.append("test.entry", number=number)
    [path] = audit_files(root)
    return path


def test_entries_chain_and_verify(tmp_path: Path) -> None:
    path = write_entries(tmp_path, 3)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["number"] for e in lines] == [0, 1, 2]
    assert lines[0]["prev"] == audit.GENESIS and lines[1]["prev"] == lines[0]["hash"]
    assert audit.verify(str(tmp_path)) == (3, [])


def test_a_second_writer_process_continues_the_chain_of_its_file(tmp_path: Path) -> None:
    path = write_entries(tmp_path, 2)
    writer = path.stem
    again = audit.AuditLog(audit.audit_root(str(tmp_path)), writer=writer)  # e.g. a restarted pid
    again.append("test.entry", number=2)
    assert audit.verify(str(tmp_path)) == (3, [])


def test_an_edited_line_is_found(tmp_path: Path) -> None:
    path = write_entries(tmp_path, 3)
    lines = path.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["number"] = 99  # the hash is left as it was
    lines[1] = json.dumps(entry)
    path.write_text("\n".join(lines) + "\n")
    checked, problems = audit.verify(str(tmp_path))
    assert checked == 1 and len(problems) == 1
    assert "line 2: the entry was edited" in problems[0]


def test_a_rehashed_edit_breaks_the_next_line(tmp_path: Path) -> None:
    path = write_entries(tmp_path, 3)
    lines = path.read_text().splitlines()
    entry = json.loads(lines[1])
    entry.pop("hash")
    entry["number"] = 99
    entry["hash"] = audit._entry_hash(entry["prev"], entry)  # a careful forger recomputes it
    lines[1] = json.dumps(entry)
    path.write_text("\n".join(lines) + "\n")
    _, problems = audit.verify(str(tmp_path))
    assert problems and "line 3: the previous entry was deleted or changed" in problems[0]


@pytest.mark.parametrize("deleted", [0, 1])
def test_a_deleted_line_is_found(tmp_path: Path, deleted: int) -> None:
    path = write_entries(tmp_path, 3)
    lines = path.read_text().splitlines()
    del lines[deleted]
    path.write_text("\n".join(lines) + "\n")
    _, problems = audit.verify(str(tmp_path))
    assert problems and f"line {deleted + 1}: the previous entry was deleted or changed" in problems[0]


def test_a_line_that_is_not_an_entry_is_found(tmp_path: Path) -> None:
    path = write_entries(tmp_path, 2)
    path.write_text(path.read_text() + "garbage\n")
    _, problems = audit.verify(str(tmp_path))
    assert problems == [f"{path.parent.name}/{path.name} line 3: not an audit entry"]


def test_a_store_that_cannot_be_written_does_not_raise(tmp_path: Path, caplog) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    audit.record(audit.audit_root(str(blocked)), "test.entry")  # mkdir under a file fails
    assert "not written" in caplog.text


def test_registry_and_keys_record_what_changed_and_never_a_secret(tmp_path: Path, capsys) -> None:
    source = tmp_path / "trained"
    source.mkdir()
    (source / "model.keras").write_bytes(b"weights")
    root = tmp_path / "registry"
    registry = Registry(str(root))
    registry.publish("digits", source, {"metrics": {}})
    registry.set_labels("digits", 1, ["prod"])
    record, secret = KeyFile(keys_path(str(root))).create(["digits"], role="predict")
    KeyFile(keys_path(str(root))).revoke(record.id)

    found = audit.entries(str(root))
    assert [e["action"] for e in found] == ["model.published", "label.moved", "key.created",
                                            "key.revoked"]
    assert found[0]["model"] == "digits" and found[0]["version"] == 1 and found[0]["content_hash"]
    assert found[1]["labels"] == ["prod"] and found[2]["key_id"] == record.id
    everything = "".join(p.read_text() for p in audit_files(root))
    assert secret not in everything and secret.rsplit(".", 1)[1] not in everything

    assert [e["action"] for e in audit.entries(str(root), action="key.")] == ["key.created",
                                                                                 "key.revoked"]
    assert audit.entries(str(root), model="other") == []
    assert audit.entries(str(root), since="2999-01-01") == []

    assert cli_main(["--registry", str(root), "audit", "verify"]) == 0
    assert "audit trail intact: 4 entries" in capsys.readouterr().out
    assert cli_main(["--registry", str(root), "audit", "show", "--action", "label"]) == 0
    assert "label.moved" in capsys.readouterr().out


def test_cli_verify_fails_with_the_integrity_exit_code(tmp_path: Path, capsys) -> None:
    path = write_entries(tmp_path, 2)
    path.write_text(path.read_text().splitlines()[1] + "\n")
    assert cli_main(["--registry", str(tmp_path), "audit", "verify"]) == 1
    err = capsys.readouterr().err
    assert "tampered with" in err and "line 1" in err and "Traceback" not in err


def test_payloads_keep_text_as_text_binary_as_base64_and_cut_at_the_limit() -> None:
    import base64

    assert audit.payload(None, 10) is None
    assert audit.payload(b'{"instances": [1]}', 100) == {"bytes": 18, "text": '{"instances": [1]}'}
    raw = bytes([0xFF, 0x00, 0x80, 0x01])
    binary = audit.payload(raw, 100)
    assert base64.b64decode(binary["base64"]) == raw and "text" not in binary
    cut = audit.payload(b"x" * 50, 8)
    assert cut == {"bytes": 50, "text": "x" * 8, "truncated_at": 8}


def test_payloads_are_off_unless_the_app_turns_them_on() -> None:
    from maas.serving.settings import ServeAppConfig

    config = ServeAppConfig.model_validate({"models": [{"name": "m"}]})
    assert config.audit_payloads is False
    with pytest.raises(ValueError):
        ServeAppConfig.model_validate({"models": [{"name": "m"}], "audit_payload_max_bytes": -1})


def test_the_fast_canonical_text_is_byte_for_byte_what_json_writes() -> None:
    """Entries are hashed over their canonical text, so orjson's fast path must never differ
    from json.dumps (or every chain written before would fail to verify); values it would write
    differently take the json path."""
    import json
    import random

    from maas.audit import _canonical, _orjson_text

    def reference(entry: dict) -> str:
        return json.dumps(entry, sort_keys=True, separators=(",", ":"), default=str)

    rng = random.Random(0)
    strings = ["digits_mlp", "a\"quote", "back\\slash", "café", "tab\there", "new\nline", "emoji 🙂",
               "", " ", "<&>/", "\x7f", "ok"]
    floats = [0.0, -0.0, 3.21, 1e-4, 9.99e-5, 1e16, 9999999999999998.0, 1e-7, 123.456, float("nan"),
              float("inf"), 2.0 ** 70]
    ints = [0, -1, 200, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**30]
    others = [None, True, False, [1, 2], {"a": 1}, (1, 2)]
    pool = strings + floats + ints + others
    safe = 0
    for _ in range(3000):
        entry = {rng.choice(["action", "model", "z", "a b", "é", "rows", "prev"]) + str(rng.randint(0, 9)):
                 rng.choice(pool) for _ in range(rng.randint(0, 12))}
        safe += _orjson_text(entry) is not None
        assert _canonical(entry) == reference(entry), entry
    for _ in range(2000):  # floats across the fast path's whole range
        value = rng.choice([1, -1]) * 10 ** rng.uniform(-4, 16)
        assert _canonical({"latency_ms": value}) == reference({"latency_ms": value})
    assert safe > 100  # the fast path was taken, not only the fallback
