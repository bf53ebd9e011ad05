"""Percentage canaries without Ray: the weighted and sticky split, the settings' refusals, the
rollout judge on a virtual clock (promoted step by step, rolled back on errors, on p99, on
accuracy; no decision on too few requests), the shared decisions (files under the registry, the
furthest decision wins across replicas), feedback, abort and the ``serve rollout`` report."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import numpy as np
import pytest

from maas.errors import ConfigError, RegistryError
from maas.schema import validate_config
from maas.serving.canary import (
    ROLLED_BACK_RANK,
    Arm,
    Caller,
    Decision,
    FeedbackMemory,
    Rollout,
    Split,
    furthest,
    judge,
    label_index,
    predicted_classes,
    rollout_id,
)
from maas.serving.settings import ModelSettings, RolloutPolicy
from maas.serving.versions import plan_versions
from tests.unit.test_serve_hosting import FakeRegistryHost, loaded


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def settings(**values: Any) -> ModelSettings:
    return validate_config(ModelSettings, values, "test")


def policy(**values: Any) -> RolloutPolicy:
    base = {"steps": [10, 50, 100], "window_s": 10, "min_requests": 20}
    return validate_config(RolloutPolicy, {**base, **values}, "test")


# --- the split ---------------------------------------------------------------------------------

def test_weighted_split_proportions_over_many_requests() -> None:
    rng = random.Random(7)
    split = Split([(1, 90), (2, 10)], rng=rng.random)
    counts = {1: 0, 2: 0}
    for _ in range(20_000):
        counts[split.choose()] += 1
    assert counts[2] / 20_000 == pytest.approx(0.10, abs=0.01)
    three = Split([(3, 1), (4, 1), (5, 2)], rng=random.Random(3).random)
    picks = [three.choose() for _ in range(20_000)]
    assert [picks.count(v) / 20_000 for v in (3, 4, 5)] == pytest.approx([0.25, 0.25, 0.5], abs=0.015)
    assert Split([(1, 0), (2, 5)]).choose() == 2  # a zero weight gets nothing
    assert Split([(1, 60), (1, 40)]).percent() == {"1": 100.0}  # two keys naming one version


def test_sticky_callers_see_one_version_and_promotion_only_moves_them_onto_the_canary() -> None:
    at_10 = Split([(2, 10), (1, 90)], sticky="x-user", salt="m")
    at_50 = Split([(2, 50), (1, 50)], sticky="x-user", salt="m")
    users = [Caller(headers={"x-user": f"user-{i}"}) for i in range(4000)]
    first = [at_10.choose(u) for u in users]
    assert all(at_10.choose(u) == v for u, v in zip(users, first, strict=True))  # every time
    assert first.count(2) / len(users) == pytest.approx(0.10, abs=0.02)
    later = [at_50.choose(u) for u in users]
    assert all(b == 2 for a, b in zip(first, later, strict=True) if a == 2)  # canary users stay
    assert later.count(2) / len(users) == pytest.approx(0.50, abs=0.03)
    by_key = Split([(2, 50), (1, 50)], sticky="api_key", salt="m")
    assert len({by_key.choose(Caller(key_id="k1")) for _ in range(50)}) == 1
    # no header: split per request
    assert len({at_50.choose(Caller(headers={})) for _ in range(200)}) == 2


# --- settings ----------------------------------------------------------------------------------

@pytest.mark.parametrize("values, message", [
    ({"traffic": {"stable": 90, "canary": -1}}, "finite and non-negative"),
    ({"traffic": {"stable": 0, "canary": 0}}, "add up to 0"),
    ({"traffic": {}}, "traffic is empty"),
    ({"traffic": {"not a label!": 1}}, "traffic.not a label!"),
    ({"sticky": "x-user"}, "sticky needs traffic"),
    ({"rollout": {}}, "rollout needs traffic"),
    ({"traffic": {"a": 1, "b": 1, "c": 1}, "rollout": {}}, "exactly two versions or labels"),
    ({"traffic": {"a": 50, "b": 50}, "rollout": {}}, "say which is the canary"),
    ({"traffic": {"a": 90, "b": 10}, "rollout": {"canary": "c"}}, "rollout.canary 'c' is not a key"),
    ({"traffic": {"a": 90, "b": 10}, "rollout": {"steps": [50, 10]}}, "must ascend"),
    ({"traffic": {"a": 90, "b": 10}, "rollout": {"steps": [10, 150]}}, "at most 100"),
    ({"traffic": {"a": 90, "b": 10}, "rollout": {"window_s": 0}}, "window_s"),
])
def test_traffic_and_rollout_settings_refuse_bad_values(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings(**values)


def test_traffic_keys_resolve_to_labels_or_served_versions() -> None:
    good = settings(versions={"latest": 2}, labels={"stable": 1}, traffic={"stable": 90, 2: 10},
                    rollout={})
    assert good.traffic == {"stable": 90.0, "2": 10.0}  # YAML's int key is a version number
    assert good.rollout_keys() == ("2", "stable")  # the smaller weight is the canary by default
    plan = plan_versions("m", good, [1, 2])
    assert plan.traffic == (("stable", 1, 90.0), ("2", 2, 10.0))
    with pytest.raises(RegistryError, match="names 'canary', which is neither a label nor a served "
                                            r"version \(labels: stable=1; served versions: 1, 2\)"):
        plan_versions("m", settings(versions={"latest": 2}, labels={"stable": 1},
                                    traffic={"stable": 90, "canary": 10}), [1, 2])
    with pytest.raises(RegistryError, match="served versions: 2"):
        plan_versions("m", settings(traffic={"1": 50, "2": 50}), [1, 2])  # 1 not served
    with pytest.raises(RegistryError, match="judge version 2 against itself"):
        plan_versions("m", settings(labels={"stable": 2, "canary": "latest"},
                                    traffic={"stable": 90, "canary": 10}, rollout={}), [1, 2])


# --- the judge ---------------------------------------------------------------------------------

def feed(rollout: Rollout, requests: int, canary_s: float = 0.001, stable_s: float = 0.001,
         canary_errors: int = 0) -> None:
    """A window's traffic at the rollout's share: single-row calls of the given times."""
    share = rollout.share / 100
    to_canary = round(requests * share)
    for i in range(to_canary):
        if i < canary_errors:
            rollout.canary.failed(1)
        else:
            rollout.canary.called(1, canary_s)
    for _ in range(requests - to_canary):
        rollout.stable.called(1, stable_s)


def new_rollout(clock: Clock, start: float = 10, **values: Any) -> Rollout:
    return Rollout("r1", policy(**values), canary_version=2, stable_version=1, start_share=start,
                   clock=clock, rng=random.Random(1).random)


def test_a_good_canary_is_promoted_step_by_step_to_100() -> None:
    clock = Clock()
    rollout = new_rollout(clock)
    decisions = []
    for _ in range(5):
        feed(rollout, 400)
        clock.now += 5
        assert rollout.tick() is None  # mid-window: nothing breaches, nothing promoted yet
        clock.now += 5
        decision = rollout.tick()
        if decision is not None:
            decisions.append(decision)
    assert [(d.rank, d.share, d.state) for d in decisions] == [(1, 50, "running"), (2, 100, "done")]
    assert "promoted to 50%: held for a window" in decisions[0].reason
    assert decisions[0].stats["canary"]["requests"] == 40 and not rollout.running
    assert rollout.state()["canary_share"] == 100 and rollout.state()["next_step"] is None


def test_a_canary_with_errors_is_rolled_back_within_one_window() -> None:
    clock = Clock()
    rollout = new_rollout(clock, min_requests=20, max_error_rate_increase=0.05)
    rollout.stable.called(100, 0.001)
    for i in range(20):  # one in four canary calls fails
        (rollout.canary.failed if i % 4 == 0 else lambda n: rollout.canary.called(n, 0.001))(1)
        clock.now += 0.1
        decision = rollout.tick()
        if i < 19:
            assert decision is None  # under min_requests: not judged yet
    assert decision is not None and decision.state == "rolled_back" and decision.share == 0
    assert decision.rank == ROLLED_BACK_RANK and clock.now < 10  # mid-window, at once
    assert "error rate 25.0% (5 of 20 requests) against stable's 0.0%" in decision.reason
    assert rollout.tick() is None and rollout.share == 0  # final


def test_a_slow_canary_is_rolled_back_on_p99_but_tiny_differences_are_not_breaches() -> None:
    clock = Clock()
    slow = new_rollout(clock, max_p99_ratio=2, p99_tolerance_ms=2)
    slow.stable.called(100, 0.001)
    slow.canary.called(15, 0.001)
    slow.canary.called(5, 0.030)  # the slowest quarter: 30 ms against 1 ms
    clock.now += 1
    decision = slow.tick()
    assert decision is not None and decision.state == "rolled_back"
    assert "p99 call time 30.0 ms against stable's 1.0 ms: 30.0x > 2x" in decision.reason
    jitter = new_rollout(clock, max_p99_ratio=2, p99_tolerance_ms=2)
    jitter.stable.called(100, 0.0003)
    jitter.canary.called(20, 0.0009)  # 3x, but 0.6 ms: noise for a sub-millisecond call
    assert jitter.tick() is None


def test_too_few_requests_means_no_decision() -> None:
    clock = Clock()
    rollout = new_rollout(clock, min_requests=50)
    rollout.canary.failed(10)  # all failing, but only 10: not judged
    rollout.stable.called(300, 0.001)
    clock.now += 10
    assert rollout.tick() is None and rollout.running and rollout.share == 10
    assert "too few requests to judge: canary 10, stable 300" in rollout.last_verdict["reason"]
    assert rollout.canary.requests == 0  # the next window is judged on its own


def test_accuracy_from_feedback_gates_promotion_and_rolls_back_a_worse_canary() -> None:
    clock = Clock()
    rollout = new_rollout(clock, max_accuracy_drop=0.05, min_feedback=30)
    feed(rollout, 400)
    clock.now += 10
    assert rollout.tick() is None and "waiting for feedback" in rollout.last_verdict["reason"]
    feed(rollout, 400)
    rollout.canary.scored(30, 28)
    rollout.stable.scored(30, 28)
    clock.now += 10
    promoted = rollout.tick()
    assert promoted is not None and promoted.share == 50 and "accuracy 93.3% vs 93.3%" in promoted.reason
    rollout.canary.scored(40, 30)  # 75% against 95%
    rollout.stable.scored(40, 38)
    decision = rollout.tick()
    assert decision is not None and decision.state == "rolled_back"
    assert "accuracy 75.0% on 40 labelled answers against stable's 95.0%" in decision.reason


def test_judge_is_pure_over_two_arms() -> None:
    canary, stable = Arm(), Arm()
    canary.called(30, 0.001)
    stable.called(30, 0.001)
    assert judge(policy(), canary, stable, window_over=False) is None
    assert judge(policy(), canary, stable, window_over=True).action == "promote"


# --- shared decisions --------------------------------------------------------------------------

def test_decision_files_are_shared_and_the_furthest_decision_wins(tmp_path) -> None:
    from maas.registry import Registry

    registry = Registry(str(tmp_path))
    assert registry.rollout_decisions("m", "abc") == []
    for rank, state, share in [(1, "running", 50), (ROLLED_BACK_RANK, "rolled_back", 0),
                               (2, "done", 100)]:  # a late promotion written after the rollback
        registry.record_rollout_decision("m", "abc", Decision("abc", state, rank, share, "why").to_dict())
    registry.record_rollout_decision("m", "other", Decision("other", "running", 1, 50, "x").to_dict())
    shared = [Decision.from_dict(d) for d in registry.rollout_decisions("m", "abc")]
    assert len(shared) == 3 and furthest(shared).state == "rolled_back"
    assert not list(tmp_path.glob("m/.rollout/abc/*.tmp"))  # written whole, then renamed

    clock = Clock()
    replica = Rollout("abc", policy(), 2, 1, 10, clock=clock)
    assert replica.adopt([Decision("abc", "running", 1, 50, "promoted")]).share == 50
    assert replica.adopt([Decision("abc", "running", 1, 50, "again")]) is None  # not ahead
    assert replica.adopt([Decision("zzz", "done", 9, 100, "another rollout")]) is None
    assert replica.adopt(shared).state == "rolled_back" and not replica.running
    with pytest.raises(RegistryError, match="invalid rollout id"):
        registry.rollout_decisions("m", "../x")


class Store:
    """Shared decisions of several fake replicas (the registry's files, in memory)."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, int], dict] = {}


class CanaryHost(FakeRegistryHost):
    """A fake replica: versions in ``failing`` raise on every call; decisions go to ``store``."""

    def __init__(self, registered: list[int], store: Store, clock: Clock, failing: set[int] = frozenset()):
        super().__init__(registered)
        self.store, self.failing, self.clock = store, failing, clock

    def _fake_load(self, version: int) -> Any:
        model = super()._fake_load(version)
        if version in self.failing:
            def broken(batch: Any) -> Any:
                raise RuntimeError(f"version {version} cannot take this input")
            model.predict = broken
        return model

    def _read_decisions(self, identity: str) -> list[dict]:
        return [d for (i, _), d in self.store.files.items() if i == identity]

    def _write_decision(self, identity: str, decision: dict) -> None:
        self.store.files[(identity, decision["rank"])] = decision


ROLLOUT = {"labels": {"stable": 1, "canary": 2}, "versions": {"latest": 2},
           "traffic": {"stable": 90, "canary": 10},
           "rollout": {"steps": [10, 50, 100], "window_s": 10, "min_requests": 20}}


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_replicas_follow_one_decision_and_a_rollback_beats_a_late_promotion() -> None:
    async def scenario() -> None:
        store, clock = Store(), Clock()
        a, b = CanaryHost([1, 2], store, clock), CanaryHost([1, 2], store, clock)
        for host in (a, b):
            await host.configure(ROLLOUT)
            assert host.rollout.share == 10 and host.split.percent() == {"2": 10.0, "1": 90.0}
        for _ in range(400):  # a's window: the canary holds
            await a.infer([[0.0, 0.0]], caller=Caller(request_id=None))
        clock.now += 10
        decision = a.rollout.tick()
        assert decision is not None and decision.share == 50
        await a._publish(a.rollout, decision)
        await b._share_decisions(b.rollout)  # b reads it within its poll
        assert b.rollout.share == 50 and b.split.percent() == {"2": 50.0, "1": 50.0}
        assert [action for action, _ in a.audited][-1] == "rollout.promoted" and not any(
            action.startswith("rollout") for action, _ in b.audited)  # the decider audits
        # b rolls back while a, not having read it yet, promotes to 100: the rollback wins
        b.rollout.canary.failed(25)
        back = b.rollout.tick()
        await b._publish(b.rollout, back)
        for _ in range(100):
            a.rollout.canary.called(1, 0.001)
            a.rollout.stable.called(1, 0.001)
        clock.now += 10
        late = a.rollout.tick()
        assert late is not None and late.state == "done"
        await a._publish(a.rollout, late)
        await a._share_decisions(a.rollout)
        assert a.rollout.decision.state == "rolled_back" and a.split.percent() == {"2": 0.0, "1": 100.0}
        answers = {(await a.infer([[0.0, 0.0]]))["version"] for _ in range(50)}
        assert answers == {1}
        status = await a.status()
        assert status["rollout"]["state"] == "rolled_back" and status["traffic"]["versions"] == {
            "stable": 1, "canary": 2}
        # final until the config changes: a new configuration is a new rollout at its start share
        await a.configure({**ROLLOUT, "refresh": 1})
        assert a.rollout.share == 10 and a.rollout.running

    run(scenario())


def test_a_failing_canary_fails_only_its_own_requests_and_is_counted() -> None:
    async def scenario() -> None:
        host = CanaryHost([1, 2], Store(), Clock(), failing={2})
        await host.configure(ROLLOUT)
        row, rows = np.zeros((1, 2), np.float32), np.zeros((2, 2), np.float32)
        batch = [(host.models[1], row), (host.models[2], row), (host.models[1], rows)]
        results = host._predict_apart(batch)  # one batch mixing both versions
        assert isinstance(results[1], RuntimeError)
        assert results[0].shape == (1, 2) and results[2].shape == (2, 2)
        assert host.rollout.canary.errors == 1 and host.rollout.stable.requests == 2
        failed = await host.infer([[0.0, 0.0]], version="2")  # a JSON 500 naming the version
        assert failed["status"] == 500 and failed["error"] == (
            "model 'm' version 2 failed to answer: RuntimeError: version 2 cannot take this input")
        # requests naming a version or label keep going where they say, whatever the split
        assert (await host.infer([[0.0, 0.0]], label="stable"))["version"] == 1

    run(scenario())


def test_a_failing_canary_is_judged_at_once_not_at_the_next_poll() -> None:
    async def scenario() -> None:
        host = CanaryHost([1, 2], Store(), Clock(), failing={2})
        await host.configure({**ROLLOUT, "traffic": {"stable": 50, "canary": 50},
                              "rollout": {**ROLLOUT["rollout"], "canary": "canary"}})
        failed = 0
        while host.rollout.running:
            answer = await host.infer([[0.0, 0.0]])
            failed += answer.get("status") == 500
            await asyncio.sleep(0)  # the early judgement runs right after the batch
        assert failed == 20 and host.rollout.decision.state == "rolled_back"  # min_requests
        await host._judging
        assert [d["state"] for d in host.store.files.values()] == ["rolled_back"]  # shared

    run(scenario())


def test_a_rollout_whose_versions_do_not_load_leaves_the_served_split_alone() -> None:
    async def scenario() -> None:
        host = CanaryHost([1, 2], Store(), Clock())
        await host.configure({"versions": {"latest": 2}, "traffic": {"1": 80, "2": 20}})
        host.registered.append(3)
        host.broken.add(3)
        await host.configure({**ROLLOUT, "labels": {"stable": 1, "canary": 3}})  # v3 fails to load
        assert "integrity check" in host.load_error and host.rollout is None
        assert host.split.percent() == {"1": 80.0, "2": 20.0}  # what is served keeps its split
        assert (await host.status())["rollout"]["state"] == "waiting"

    run(scenario())


def test_models_without_traffic_take_no_split_path() -> None:
    async def scenario() -> None:
        host = FakeRegistryHost([1, 2])
        await host.configure({"versions": {"latest": 2}})
        assert host.split is None and host.rollout is None and not host.routes_callers
        assert (await host.infer([[0.0, 0.0]]))["version"] == 2
        assert "traffic" not in await host.status() and len(host.answers) == 0

    run(scenario())


# --- feedback ----------------------------------------------------------------------------------

def test_feedback_is_scored_once_against_the_answer_and_counted_for_the_rollout() -> None:
    async def scenario() -> None:
        host = CanaryHost([1, 2], Store(), Clock())
        await host.configure({**ROLLOUT, "traffic": {"stable": 50, "canary": 50}, "rollout": {
            **ROLLOUT["rollout"], "canary": "canary", "max_accuracy_drop": 0.1}})
        answer = await host.infer([[0.0, 0.0]], caller=Caller(request_id="r1"))
        result = await host.feedback("r1", "a")  # the fake models' scores tie: class 0, "a"
        assert result["correct"] == 1 and result["version"] == answer["version"] and result["counted"]
        arm = host.rollout.arm(answer["version"])
        assert (arm.labelled, arm.correct) == (1, 1)
        again = await host.feedback("r1", "a")
        assert again["status"] == 404 and "scored once" in again["error"]
        unknown = await host.feedback("nope", "a")
        assert unknown["status"] == 404 and "another replica is not known here" in unknown["error"]
        await host.infer([[0.0, 0.0], [1.0, 1.0]], caller=Caller(request_id="r2"))
        wrong = await host.feedback("r2", ["a", "zebra"])
        assert wrong["status"] == 400 and "'zebra' is not a class" in wrong["error"]
        assert (await host.feedback("r2", ["a", 1]))["correct"] == 1  # a class value or an index

        plain = FakeRegistryHost([1])
        await plain.configure({})
        missing = await plain.feedback("r1", "a")
        assert missing["status"] == 404 and "no traffic split" in missing["error"]

    run(scenario())


def test_feedback_memory_is_bounded_and_labels_match_values_or_indices() -> None:
    memory = FeedbackMemory(capacity=3)
    for i in range(5):
        memory.remember(f"r{i}", 1, (0,))
    assert len(memory) == 3 and memory.take("r0") is None and memory.take("r4") == (1, (0,))
    assert predicted_classes(np.array([[0.1, 0.9], [0.8, 0.2]])) == (1, 0)
    assert predicted_classes(np.array([[0.7], [0.2]])) == (1, 0)
    assert label_index("b", ["a", "b"]) == 1 and label_index(1, ["a", "b"]) == 1
    assert label_index(3, [0, 1, 2, 3]) == 3 and label_index("3", [0, 1, 2, 3]) == 3
    assert label_index("z", ["a"]) is None


# --- abort and the command line -----------------------------------------------------------------

class FakeApi:
    def __init__(self, config: dict) -> None:
        self.config, self.deployed = config, []

    def details(self) -> dict:
        return {"applications": {"maas": {"deployed_app_config": self.config["applications"][0]}}}

    def deploy(self, config: dict) -> None:
        self.deployed.append(config)
        self.config = config


def test_rollout_report_and_abort_through_the_config_path(tmp_path) -> None:
    from maas.registry import Registry
    from maas.servectl import abort_changes, apply, render_rollout, rollout_status

    registry = Registry(str(tmp_path / "registry"))
    source = tmp_path / "files"
    source.mkdir()
    (source / "model.keras").write_bytes(b"x")
    for _ in range(2):
        registry.publish("m", source, {"schema": {"input_shape": [2], "classes": ["a", "b"]}})
    user_config = {**ROLLOUT, "rollout": {**ROLLOUT["rollout"], "window_s": 30}}
    api = FakeApi({"applications": [{"name": "maas", "import_path": "serve.app:build_app",
                                     "args": {"registry_root": registry.root_uri,
                                              "models": [{"name": "m", "hosting": "ingress"}]},
                                     "deployments": [{"name": "Ingress",
                                                      "user_config": {"models": {"m": user_config}}}]}]})
    report = rollout_status(api, "maas", "m")
    assert report["state"] == "running" and report["canary_share"] == 10 and report["next_step"] == 50
    assert report["versions"] == {"stable": 1, "canary": 2} and report["decisions"] == []
    identity = rollout_id("m", settings(**user_config), (("stable", 1, 90.0), ("canary", 2, 10.0)))
    assert report["id"] == identity
    promoted = Decision(identity, "running", 1, 50, "promoted to 50%: held for a window",
                        "2026-12-06T19:00:00", "r-1")
    registry.record_rollout_decision("m", identity, promoted.to_dict())
    text = render_rollout(rollout_status(api, "maas", "m"))
    assert "running: canary 'canary' (v2) gets 50% of requests naming no version" in text
    assert "next step 100%" in text and "promoted to 50%: held for a window  [r-1]" in text

    assert abort_changes(settings(**user_config), "m") == {"traffic": {"stable": 90, "canary": 0}}
    with pytest.raises(ConfigError, match="no rollout to abort"):
        abort_changes(settings(), "m")
    deployed = apply(api, "maas", "m", "rollout-abort", registry=registry.root_uri,
                     edit=lambda current: abort_changes(current, "m"))
    assert deployed["traffic"] == {"stable": 90.0, "canary": 0.0} and deployed["rollout"]
    after = rollout_status(api, "maas", "m")
    assert after["state"] == "stopped" and after["canary_share"] == 0
    assert "stopped (canary weight 0)" in render_rollout(after)

    async def stopped() -> None:  # a replica under the aborted config: everything to stable
        host = CanaryHost([1, 2], Store(), Clock())
        await host.configure(deployed)
        assert host.rollout is None and host.split.percent() == {"1": 100.0, "2": 0.0}
        status = await host.status()
        assert status["rollout"]["state"] == "stopped"
    run(stopped())


def test_the_cli_parses_serve_rollout() -> None:
    from maas.cli import parse_args

    args = parse_args(["serve", "rollout", "digits_mlp", "--abort"])
    assert (args.action, args.model, args.abort) == ("rollout", "digits_mlp", True)


def test_loaded_fake_models_score_class_zero() -> None:
    assert predicted_classes(loaded(1).predict(np.zeros((1, 2), np.float32))) == (0,)
