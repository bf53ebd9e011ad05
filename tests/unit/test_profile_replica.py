"""bench/profile_replica.py's reading of py-spy's collapsed stacks (no Ray, no py-spy)."""

import sys

from tests.conftest import REPO


def test_samples_are_counted_by_the_kind_of_our_code_on_their_stack() -> None:
    sys.path.insert(0, str(REPO / "bench"))
    from profile_replica import shares

    collapsed = "\n".join([
        "Thread.run (threading.py:982);Dataplane._audit (serve/dataplane.py:160) 3",
        "Thread.run (threading.py:982);Dataplane._write_audit (serve/dataplane.py:241);"
        "_line (maas/audit.py:93) 2",
        "Thread.run (threading.py:982);Capture.offer (maas/serving/capture.py:90) 4",
        "Thread.run (threading.py:982);flush (logging/__init__.py:1113) 5",  # not capture's flush
        "Dataplane._caller (serve/dataplane.py:205) 1",
        "quick_execute (tensorflow/python/eager/execute.py:53) 85",
        "a line py-spy did not finish",
    ])
    total, found = shares(collapsed)
    assert total == 100
    assert found == {"audit": 0.05, "capture": 0.04, "caller": 0.01}
