"""Which cluster a driver joins (maas.raycluster.choose_target), decided without Ray; and what
``python -m maas status`` shows of the cluster it joined (maas.status), also without Ray."""

from __future__ import annotations

import logging
import os
import socket
from types import SimpleNamespace

import pytest

from maas.errors import ClusterError
from maas.raycluster import Target, answers, choose_target, split_address
from maas.status import _quiet, render, visible_jobs

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


@pytest.mark.parametrize("address, preset, expected", [
    ("local", None, "0"),        # an instance we start: workers at the driver's priority
    ("local", "15", "15"),       # the user's own setting wins
    (LIVE, None, None),          # a cluster we join keeps whatever its own start chose
])
def test_a_local_instance_we_start_runs_workers_at_normal_priority(
        monkeypatch: pytest.MonkeyPatch, address: str, preset: str | None, expected: str | None) -> None:
    import ray

    from maas import raycluster

    seen: dict[str, object] = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setattr(raycluster, "answers", lambda a, timeout_s=0: a == LIVE)
    monkeypatch.setattr(raycluster, "_recorded_address", lambda temp_dir: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if preset is None:
        monkeypatch.delenv("RAY_worker_niceness", raising=False)
    else:
        monkeypatch.setenv("RAY_worker_niceness", preset)
    raycluster.init_ray(address)
    assert seen["address"] == address
    assert os.environ.get("RAY_worker_niceness") == expected
    assert seen["runtime_env"]["env_vars"]["TF_USE_LEGACY_KERAS"] == "1"


# ---------------------------------------------------------------------------------------------
# `python -m maas status` (maas.status): which jobs it shows, and the screen itself.

def _job(job_id: str | None, kind: str, status: str, submission_id: str | None = None,
         entrypoint: str = "python -m train", start_time: int = 0) -> SimpleNamespace:
    return SimpleNamespace(job_id=job_id, type=SimpleNamespace(value=kind), submission_id=submission_id,
                           status=SimpleNamespace(value=status), entrypoint=entrypoint,
                           start_time=start_time)


def test_status_never_lists_its_own_connection() -> None:
    own = _job("05000000", "DRIVER", "RUNNING", entrypoint="python -m maas status")
    submitted = _job("03000000", "SUBMISSION", "SUCCEEDED", submission_id="raysubmit_1")
    assert visible_jobs([own, submitted], own_job_id="05000000") == [submitted]


def test_status_lists_submitted_jobs_and_running_drivers_only() -> None:
    jobs = [_job("01000000", "DRIVER", "SUCCEEDED"), _job("02000000", "DRIVER", "RUNNING"),
            _job(None, "SUBMISSION", "PENDING", submission_id="raysubmit_2"),
            _job("04000000", "SUBMISSION", "FAILED", submission_id="raysubmit_3")]
    assert [j.job_id for j in visible_jobs(jobs, own_job_id="09000000")] == ["02000000", None, "04000000"]


def _info(jobs: list, models: list | None = None) -> dict:
    return {"gcs": "127.0.0.1:6380", "dashboard": "http://127.0.0.1:8265", "nodes": 1,
            "total": {"CPU": 2.0, "memory": 4 * 2**30}, "available": {"CPU": 1.0, "memory": 2**30},
            "jobs": jobs, "models": models or []}


def test_render_shows_jobs_newest_first_and_models() -> None:
    jobs = [_job("01000000", "SUBMISSION", "SUCCEEDED", "raysubmit_old", start_time=1),
            _job("02000000", "SUBMISSION", "RUNNING", "raysubmit_new", start_time=2)]
    models = [{"app": "maas", "model": "digits_mlp", "status": "HEALTHY", "replicas": 2,
               "version": 3, "rate": 0.5}]
    screen = render(_info(jobs, models))
    assert screen.splitlines()[0] == "cluster  127.0.0.1:6380  nodes=1  dashboard=http://127.0.0.1:8265"
    assert "CPU     1.0/2.0 in use" in screen and "memory  3.0/4.0 GiB in use" in screen
    assert screen.index("raysubmit_new") < screen.index("raysubmit_old")
    assert "digits_mlp" in screen and "~0.50 req/s" in screen


def test_render_says_none_when_nothing_runs() -> None:
    screen = render(_info([]))
    assert screen.split("jobs\n")[1].startswith("  none") and screen.endswith("served models\n  none")


def test_status_silences_loggers_only_while_collecting() -> None:
    serve_logger = logging.getLogger("ray.serve")
    before = serve_logger.level
    with _quiet(["ray.serve"]):
        assert serve_logger.getEffectiveLevel() == logging.ERROR
    assert serve_logger.level == before
