"""The measuring and killing tools behind the fault tests and benches, without Ray: the figures a
fault is judged by, and killing exactly one node's processes."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import pytest

from maas.loadprobe import Answer, longest_gap, percentile, summary
from maas.localcluster import kill_session, session_processes
from maas.soak import memory_growth_pct, mixed_shots, p99_per_bucket


def answer(ended: float, status: int | str = 200, took: float = 0.01, expect: int = 200) -> Answer:
    return Answer("v1", ended - took, ended, status, expect)


def test_longest_gap_spans_the_window_edges_and_ignores_failures() -> None:
    answers = [answer(1.0), answer(1.5, 503), answer(2.0, "ClientConnectorError"), answer(4.0),
               answer(4.2)]
    assert longest_gap(answers, 0.0, 5.0) == pytest.approx(3.0)  # 1.0 -> 4.0: failures do not count
    assert longest_gap(answers, 0.0, 10.0) == pytest.approx(5.8)  # nothing after 4.2
    assert longest_gap([], 2.0, 3.5) == pytest.approx(1.5)


def test_summary_counts_failures_by_kind_and_expected_refusals_as_correct() -> None:
    answers = [answer(t) for t in (1.0, 1.1, 1.2)] + [
        answer(1.3, 503), answer(1.4, "ServerDisconnectedError"),
        answer(1.5, 400, expect=400),  # an invalid request refused as it should be
        answer(1.6, 200, expect=400),  # an invalid request answered: wrong
        answer(9.0, 500),              # outside the window
    ]
    figures = summary(answers, 0.0, 2.0)
    assert figures["requests"] == 7 and figures["failed"] == 3
    assert figures["errors_5xx"] == 1 and figures["connection_errors"] == 1
    assert figures["failures_by_status"] == {"503": 1, "ServerDisconnectedError": 1, "200": 1}
    assert figures["failed_pct"] == pytest.approx(300 / 7)


def test_percentile_and_per_bucket_p99() -> None:
    assert percentile(list(range(1, 101)), 99) == 99
    assert math.isnan(percentile([], 99))
    answers = [answer(t + 0.5, took=0.010) for t in range(10)]
    answers += [answer(t + 10.5, took=0.050) for t in range(10)]
    assert p99_per_bucket(answers, 0.0, 20.0, 10.0) == [pytest.approx(10.0), pytest.approx(50.0)]


def test_memory_growth_is_measured_after_the_warmup_only() -> None:
    samples = [(0.0, 100.0, 4), (10.0, 500.0, 4), (60.0, 1000.0, 4), (70.0, 1000.0, 4), (80.0, 1000.0, 4),
               (500.0, 1040.0, 4), (510.0, 1050.0, 4), (520.0, 1060.0, 4)]
    assert memory_growth_pct(samples, warmup_s=60, started=0.0) == pytest.approx(5.0)
    assert math.isnan(memory_growth_pct(samples[:2], warmup_s=60, started=0.0))


def test_the_soak_mix_holds_an_invalid_request_that_expects_its_400() -> None:
    shots = mixed_shots()
    assert [s.expect for s in shots].count(400) == 1
    assert {s.kind for s in shots} == {"v1", "v1_64", "v2", "invalid"}


def test_kill_session_kills_a_node_with_its_children_and_nothing_else() -> None:
    """What LocalCluster.kill does to a node: every process of its session, children included;
    a process outside that session survives."""
    code = "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"
    node = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        deadline = time.time() + 10
        while len(session_processes(node.pid)) < 2 and time.time() < deadline:
            time.sleep(0.05)
        assert len(session_processes(node.pid)) == 2  # the parent and its child
        assert kill_session(node.pid) == 2
        node.wait(timeout=10)
        deadline = time.time() + 10
        while session_processes(node.pid) and time.time() < deadline:
            time.sleep(0.05)
        assert session_processes(node.pid) == []
        assert bystander.poll() is None
    finally:
        bystander.kill()
        node.kill()
