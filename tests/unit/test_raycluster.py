"""Which cluster a driver joins (maas.raycluster.choose_target), decided without Ray."""

from __future__ import annotations

import socket

import pytest

from maas.errors import ClusterError
from maas.raycluster import Target, answers, choose_target, split_address

LIVE, DEAD, OTHER = "127.0.0.1:6380", "127.0.0.1:6999", "127.0.0.1:7001"


def _choose(address=None, env=None, record=None, live=(LIVE,), running=(), local=True) -> Target:
    return choose_target(address, env, record, answers=lambda a: a in live or a.endswith(":8265"),
                         running=lambda: running, is_local_host=lambda host: local)


def test_no_address_joins_the_recorded_cluster_when_it_answers() -> None:
    assert _choose(record=LIVE) == Target(LIVE, found_here=True)


def test_a_stale_record_starts_a_local_instance_at_once() -> None:
    target = _choose(record=DEAD)
    assert target.address == "local" and DEAD in target.note


def test_no_address_and_no_record_starts_a_local_instance_silently() -> None:
    assert _choose() == Target("local")


def test_no_address_never_joins_an_unrecorded_cluster() -> None:
    # another process's private ray.init() cluster dies with that process
    assert _choose(record=None, running=(LIVE,)).address == "local"


@pytest.mark.parametrize("address,env", [(DEAD, None), (None, DEAD), ("auto", DEAD), (DEAD, LIVE)])
def test_an_explicit_dead_address_fails_naming_it_and_its_source(address, env) -> None:
    with pytest.raises(ClusterError, match=DEAD) as caught:
        _choose(address, env, record=LIVE)
    assert ("--address" if address == DEAD else "RAY_ADDRESS") in str(caught.value)


def test_an_explicit_live_address_is_used_as_given() -> None:
    assert _choose(None, LIVE, record=DEAD) == Target(LIVE)
    assert _choose(LIVE, DEAD) == Target(LIVE)  # the argument wins over RAY_ADDRESS


def test_local_always_starts_a_new_instance() -> None:
    assert _choose("local", LIVE, record=LIVE) == Target("local")
    assert _choose(None, "local", record=LIVE) == Target("local")


def test_auto_joins_a_live_cluster_or_fails_fast() -> None:
    assert _choose("auto", record=LIVE) == Target(LIVE, found_here=True)
    assert _choose("auto", record=DEAD, running=(DEAD, LIVE)) == Target(LIVE, found_here=True)
    with pytest.raises(ClusterError, match="no running Ray cluster.*does not answer"):
        _choose("auto", record=DEAD)
    with pytest.raises(ClusterError, match="several"):
        _choose("auto", record=DEAD, live=(LIVE, OTHER), running=(LIVE, OTHER))


def test_a_dashboard_url_joins_the_cluster_on_this_machine() -> None:
    url = "http://127.0.0.1:8265"
    assert _choose(None, url, record=LIVE) == Target(LIVE, found_here=True)
    assert _choose("auto", url, record=DEAD, running=(LIVE,)) == Target(LIVE, found_here=True)


def test_a_dashboard_url_that_does_not_answer_fails_naming_it() -> None:
    with pytest.raises(ClusterError, match=r"dashboard at http://127.0.0.1:9999 \(from RAY_ADDRESS\)"):
        _choose(None, "http://127.0.0.1:9999", record=LIVE)


def test_a_remote_dashboard_url_says_what_a_driver_needs() -> None:
    with pytest.raises(ClusterError, match="GCS address"):
        _choose(None, "http://head.example:8265", record=LIVE, local=False)


def test_a_local_dashboard_without_a_live_cluster_fails() -> None:
    with pytest.raises(ClusterError, match="answers but no Ray cluster"):
        _choose(None, "http://127.0.0.1:8265", record=DEAD)


@pytest.mark.parametrize("address,expected", [
    ("127.0.0.1:6379", ("127.0.0.1", 6379)), ("ray://head:10001", ("head", 10001)),
    ("[::1]:6379", ("::1", 6379))])
def test_split_address(address, expected) -> None:
    assert split_address(address) == expected


def test_split_address_refuses_what_is_not_host_port() -> None:
    with pytest.raises(ClusterError, match="not a Ray address"):
        split_address("head-node")


def test_answers_checks_a_real_port_quickly() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert answers(f"127.0.0.1:{port}")
    assert not answers(f"127.0.0.1:{port}", timeout_s=1)
    assert not answers("not-an-address")
