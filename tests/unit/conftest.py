import pytest


@pytest.fixture(autouse=True)
def _private_memory_spool(tmp_path_factory, monkeypatch) -> None:
    """Capture's memory spool (``capture.spool: memory``, the default) in a folder of the test's,
    not the machine's /dev/shm."""
    monkeypatch.setattr("maas.capture_spool.MEMORY_ROOT", str(tmp_path_factory.mktemp("shm")))
