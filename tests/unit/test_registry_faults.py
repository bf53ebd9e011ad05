"""Publishing under real faults: a full disk, a read-only mount, a publisher SIGKILLed at each
step, eight publisher processes at once. After each: no half-visible version, a clear error, and
the next publish works."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from maas.cli import main as cli_main
from maas.errors import StorageError
from maas.registry import Registry

REPO = Path(__file__).resolve().parents[2]


def model_dir(parent: Path, name: str, size: int) -> Path:
    source = parent / name
    source.mkdir()
    (source / "model.keras").write_bytes(os.urandom(size))
    (source / "assets").mkdir()
    (source / "assets" / "vocab.txt").write_text("a\nb\n")
    return source


def assert_every_version_whole(root: str, name: str) -> list[int]:
    registry = Registry(root)
    versions = registry.versions(name)
    for version in versions:
        registry.read_verified(registry.get(name, version))  # raises if any file is off
    return versions


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real filesystem that fills up: tmpfs needs root (CAP_SYS_ADMIN); skipped without."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_a_full_disk_fails_cleanly_and_the_next_publish_works(tmp_path: Path, capsys) -> None:
    with small_tmpfs(tmp_path / "disk", "512k") as disk:
        root = str(disk / "registry")
        registry = Registry(root)
        registry.publish("m", model_dir(tmp_path, "small", 64 * 1024), {})
        with pytest.raises(StorageError) as caught:
            registry.publish("m", model_dir(tmp_path, "big", 2 * 1024 * 1024), {})
        message = str(caught.value)
        assert "storage is full" in message and "No space left on device" in message
        assert "nothing was published" in message and root in message
        assert assert_every_version_whole(root, "m") == [1]
        assert list((disk / "registry" / "m" / ".staging").iterdir()) == []  # space given back
        assert registry.publish("m", model_dir(tmp_path, "small2", 64 * 1024), {}).version == 2
        assert assert_every_version_whole(root, "m") == [1, 2]
        assert cli_main(["--registry", root, "models", "list"]) == 0
        assert "m" in capsys.readouterr().out


def test_a_read_only_registry_is_refused_with_what_to_do(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    Registry(str(root)).publish("m", model_dir(tmp_path, "one", 1024), {})
    if os.geteuid() == 0:  # root ignores permission bits: make the mount read-only instead
        with small_tmpfs(tmp_path / "ro", "1m") as disk:
            Registry(str(disk)).publish("m", model_dir(tmp_path, "two", 1024), {})
            subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
            check_refused(str(disk), tmp_path, "Read-only file system")
        return
    os.chmod(root / "m", 0o555)
    try:
        check_refused(str(root), tmp_path, "Permission denied")
    finally:
        os.chmod(root / "m", 0o755)


def check_refused(root: str, tmp_path: Path, reason: str) -> None:
    with pytest.raises(StorageError) as caught:
        Registry(root).publish("m", model_dir(tmp_path, "refused", 1024), {})
    assert "may not write there" in str(caught.value) and reason in str(caught.value)
    assert assert_every_version_whole(root, "m") == [1]


# A publisher that SIGKILLs itself right after one step of publishing: the step's real code runs,
# then the process dies as it would under the OOM killer or a node failure.
KILLED_PUBLISHER = r"""
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from maas import registry as r

step, calls = sys.argv[4], {"n": 0}

def die_after(original, after_call=1):
    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] >= after_call:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    return wrapper

if step == "staged-first-file":
    r._write_synced = die_after(r._write_synced)
elif step == "staged-metadata":
    r._write_synced = die_after(r._write_synced, after_call=3)  # 2 files, then metadata.json
elif step == "claimed-number":
    r.Registry._claim = staticmethod(die_after(r.Registry._claim))
elif step == "committed":
    r.Registry._commit = staticmethod(die_after(r.Registry._commit))
r.Registry(sys.argv[2]).publish("m", sys.argv[3], {"note": step})
"""


@pytest.mark.parametrize("step", ["staged-first-file", "staged-metadata", "claimed-number", "committed"])
def test_a_publisher_killed_at_any_step_leaves_no_half_version(tmp_path: Path, step: str) -> None:
    root = str(tmp_path / "registry")
    Registry(root).publish("m", model_dir(tmp_path, "first", 4096), {})
    killed = subprocess.run([sys.executable, "-c", KILLED_PUBLISHER, str(REPO), root,
                             str(model_dir(tmp_path, "second", 4096)), step], capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]

    after_kill = assert_every_version_whole(root, "m")
    assert after_kill == ([1, 2] if step == "committed" else [1])  # whole or not at all
    if step == "committed":
        assert Registry(root).get("m", 2).metadata["note"] == step
    following = Registry(root).publish("m", model_dir(tmp_path, "third", 4096), {"note": "next"})
    assert following.metadata["note"] == "next" and Registry(root).get("m").version == following.version
    assert assert_every_version_whole(root, "m")[-1] == following.version


CONCURRENT_PUBLISHER = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
from maas.registry import Registry
while not os.path.exists(sys.argv[4]):  # start together
    time.sleep(0.001)
print(Registry(sys.argv[2]).publish("m", sys.argv[3], {"publisher": sys.argv[3]}).version)
"""


def test_eight_publisher_processes_get_eight_whole_versions(tmp_path: Path) -> None:
    root, go = str(tmp_path / "registry"), tmp_path / "go"
    sources = [str(model_dir(tmp_path, f"src{i}", 32 * 1024)) for i in range(8)]
    publishers = [subprocess.Popen([sys.executable, "-c", CONCURRENT_PUBLISHER, str(REPO), root, s,
                                    str(go)], stdout=subprocess.PIPE, text=True) for s in sources]
    go.touch()
    numbers = [int(p.communicate(timeout=120)[0].strip()) for p in publishers]
    assert sorted(numbers) == list(range(1, 9))
    assert assert_every_version_whole(root, "m") == list(range(1, 9))
    registry = Registry(root)
    for source, number in zip(sources, numbers, strict=True):  # each version holds its own publisher's files
        version = registry.get("m", number)
        assert version.metadata["publisher"] == source
        assert registry.read_verified(version)["model.keras"] == Path(source, "model.keras").read_bytes()
    assert json.loads(Path(root, "m", "8", "metadata.json").read_text())["version"] == 8
