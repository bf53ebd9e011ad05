"""Percentage canaries, without Serve and without I/O: the weighted (optionally sticky) split of
requests that name no version, the rollout judge that compares a canary with the stable version
on live metrics, the decisions every replica shares, and the memory of recent answers that client
feedback is scored against. Clocks and randomness are injected, so tests run on virtual time.

How a rollout runs (``maas.serving.host.ModelHost`` drives it): each replica counts, per window,
the requests its model calls answered for each of the two versions (failed calls, and the call
time of each request) and the feedback it was sent; the judge rolls the canary back at once when
it breaches (as soon as it has ``min_requests`` in the window) and promotes it one step when a
whole window held. A decision goes to shared storage (``Registry.record_rollout_decision``), one
file per decision, and every replica adopts the furthest decision it reads there: a rollback
beats everything and is final for that configuration; otherwise the higher step wins. No clock
has to agree between replicas, and no write can undo another.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np

from maas.serving.settings import STICKY_API_KEY, ModelSettings, RolloutPolicy

ROLLED_BACK_RANK = 10_000  # a rollback outranks every promotion
LATENCY_SAMPLES = 20_000  # per version per window; past it, a uniform reservoir sample
HISTORY = 20  # decisions kept in a host's status

State = Literal["running", "done", "rolled_back"]


@dataclass(frozen=True)
class Caller:
    """Who sent a request, as far as routing and feedback need: its request id (``X-Request-ID``),
    its API key's id, and its headers (any mapping with lower-case names)."""

    request_id: str | None = None
    key_id: str | None = None
    headers: Mapping[str, str] | None = None


def sticky_point(value: str, salt: str = "") -> float:
    """A caller's fixed point in [0, 1): the same value always lands on the same version."""
    digest = hashlib.blake2b(f"{salt}\0{value}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class Split:
    """Requests that name no version -> a version, by weight. Weights are laid out on [0, 1) in
    the given order, so with the canary first a promotion only ever moves callers from stable to
    the canary: a sticky caller already on the canary stays there."""

    def __init__(self, weights: list[tuple[int, float]], sticky: str | None = None, salt: str = "",
                 rng: Callable[[], float] = random.random):
        merged: dict[int, float] = {}
        for version, weight in weights:  # two keys naming one version: one share
            merged[version] = merged.get(version, 0.0) + weight
        total = sum(merged.values())
        self.shares = {version: weight / total for version, weight in merged.items()}
        self.versions = [v for v, share in self.shares.items() if share > 0]
        running, self.bounds = 0.0, []
        for version in self.versions:
            running += self.shares[version]
            self.bounds.append(running)
        self.only = self.versions[0] if len(self.versions) == 1 else None
        self.sticky, self.salt, self._rng = sticky, salt, rng

    def choose(self, caller: Caller | None = None) -> int:
        if self.only is not None:
            return self.only
        point = None
        if self.sticky is not None and caller is not None:
            value = (caller.key_id if self.sticky == STICKY_API_KEY
                     else (caller.headers or {}).get(self.sticky.lower()))
            if value:
                point = sticky_point(value, self.salt)
        if point is None:
            point = self._rng()
        for version, bound in zip(self.versions, self.bounds, strict=True):
            if point < bound:
                return version
        return self.versions[-1]

    def percent(self) -> dict[str, float]:
        """Version (as text: a JSON key) -> its percent of the requests naming no version."""
        return {str(version): round(share * 100, 3) for version, share in self.shares.items()}


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in (0, 100]); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


class Arm:
    """One version's outcomes: requests, failed calls and call times in the current window;
    labelled answers (feedback) since the current step began."""

    def __init__(self, rng: Callable[[], float] = random.random):
        self._rng = rng
        self.labelled = self.correct = 0
        self.reset_window()

    def reset_window(self) -> None:
        self.requests = self.errors = self.timed = 0
        self.latencies: list[float] = []

    def called(self, requests: int, seconds: float) -> None:
        """``requests`` answered by one model call of ``seconds``."""
        self.requests += requests
        for _ in range(requests):
            self.timed += 1
            if len(self.latencies) < LATENCY_SAMPLES:
                self.latencies.append(seconds)
            else:  # reservoir: every sample of the window equally likely to be kept
                slot = int(self._rng() * self.timed)
                if slot < LATENCY_SAMPLES:
                    self.latencies[slot] = seconds

    def failed(self, requests: int) -> None:
        self.requests += requests
        self.errors += requests

    def scored(self, rows: int, correct: int) -> None:
        self.labelled += rows
        self.correct += correct

    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def p99_s(self) -> float | None:
        return percentile(self.latencies, 99)

    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    def summary(self) -> dict[str, Any]:
        p99 = self.p99_s()
        return {"requests": self.requests, "errors": self.errors,
                "error_rate": round(self.error_rate(), 4),
                "p99_ms": None if p99 is None else round(p99 * 1e3, 3),
                "feedback": self.labelled, "accuracy": self.accuracy()}


@dataclass(frozen=True)
class Verdict:
    action: Literal["promote", "rollback", "wait"]
    reason: str


def _pct(rate: float) -> str:
    return f"{rate * 100:.1f}%"


def judge(policy: RolloutPolicy, canary: Arm, stable: Arm, window_over: bool) -> Verdict | None:
    """The canary against the stable version. Mid-window: a rollback as soon as the canary has
    ``min_requests`` and breaches, else None. At the window's end: promote if both versions
    answered ``min_requests`` and nothing breached (and, with the accuracy rule, both have
    ``min_feedback`` labelled answers), else wait."""
    enough = policy.min_requests
    if canary.requests >= enough:
        increase = canary.error_rate() - stable.error_rate()
        if increase > policy.max_error_rate_increase:
            return Verdict("rollback", (
                f"error rate {_pct(canary.error_rate())} ({canary.errors} of {canary.requests} "
                f"requests) against stable's {_pct(stable.error_rate())}: "
                f"+{increase * 100:.1f} points > {policy.max_error_rate_increase * 100:g}"))
        canary_p99, stable_p99 = canary.p99_s(), stable.p99_s()
        if (canary_p99 is not None and stable_p99 is not None and len(stable.latencies) >= enough
                and len(canary.latencies) >= enough
                and canary_p99 > policy.max_p99_ratio * stable_p99
                and (canary_p99 - stable_p99) * 1e3 > policy.p99_tolerance_ms):
            return Verdict("rollback", (
                f"p99 call time {canary_p99 * 1e3:.1f} ms against stable's {stable_p99 * 1e3:.1f} "
                f"ms: {canary_p99 / stable_p99:.1f}x > {policy.max_p99_ratio:g}x"))
    accuracy_judged = policy.max_accuracy_drop is not None
    if accuracy_judged and min(canary.labelled, stable.labelled) >= policy.min_feedback:
        drop = stable.accuracy() - canary.accuracy()  # type: ignore[operator]
        if drop > policy.max_accuracy_drop:  # type: ignore[operator]
            return Verdict("rollback", (
                f"accuracy {_pct(canary.accuracy())} on {canary.labelled} labelled answers against "
                f"stable's {_pct(stable.accuracy())}: -{drop * 100:.1f} points > "
                f"{policy.max_accuracy_drop * 100:g}"))  # type: ignore[operator]
    if not window_over:
        return None
    if min(canary.requests, stable.requests) < enough:
        return Verdict("wait", (f"too few requests to judge: canary {canary.requests}, stable "
                                f"{stable.requests} in the window; {enough} each needed"))
    if accuracy_judged and min(canary.labelled, stable.labelled) < policy.min_feedback:
        return Verdict("wait", (f"waiting for feedback: canary {canary.labelled}, stable "
                                f"{stable.labelled} labelled answers; {policy.min_feedback} each needed"))
    canary_p99, stable_p99 = canary.p99_s(), stable.p99_s()
    latency = ("" if canary_p99 is None or stable_p99 is None else
               f", p99 {canary_p99 * 1e3:.2f} ms vs {stable_p99 * 1e3:.2f} ms")
    accuracy = ("" if not accuracy_judged else
                f", accuracy {_pct(canary.accuracy())} vs {_pct(stable.accuracy())}")  # type: ignore[arg-type]
    return Verdict("promote", (f"held for a window: {canary.requests} requests, errors "
                               f"{_pct(canary.error_rate())} vs {_pct(stable.error_rate())}"
                               f"{latency}{accuracy}"))


@dataclass(frozen=True)
class Decision:
    """Where a rollout stands, as every replica shares it. ``rank``: 0 at the start, k after the
    k-th promotion, ``ROLLED_BACK_RANK`` after a rollback; the highest rank wins."""

    rollout_id: str
    state: State
    rank: int
    share: float  # the canary's percent of the requests that name no version
    reason: str
    time: str = ""
    replica: str = ""
    canary_version: int | None = None
    stable_version: int | None = None
    stats: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Decision:
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        return cls(**known)


def furthest(decisions: list[Decision]) -> Decision | None:
    """The decision that wins: a rollback over everything, else the furthest promotion."""
    return max(decisions, key=lambda d: d.rank, default=None)


def rollout_id(name: str, settings: ModelSettings, traffic: tuple[tuple[str, int, float], ...]) -> str:
    """Names one rollout: the model, its traffic and policy, the two versions they resolve to and
    the refresh counter. Any change starts a new rollout (a rollback is final until then)."""
    versions = {key: version for key, version, _ in traffic}
    body = {"model": name, "traffic": settings.traffic, "versions": versions, "refresh": settings.refresh,
            "rollout": settings.rollout.model_dump(mode="json") if settings.rollout else None}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Rollout:
    """One replica's view of one rollout: the canary's current share (from the decisions), the
    current window's outcomes per version, and the judge. ``clock`` gives seconds (monotonic)."""

    def __init__(self, rollout_id: str, policy: RolloutPolicy, canary_version: int,
                 stable_version: int, start_share: float, replica: str = "",
                 clock: Callable[[], float] = time.monotonic, rng: Callable[[], float] = random.random):
        self.id, self.policy, self.replica, self._clock = rollout_id, policy, replica, clock
        self.canary_version, self.stable_version = canary_version, stable_version
        self.upcoming = [step for step in policy.steps if step > start_share]
        self.canary, self.stable = Arm(rng), Arm(rng)
        self.history: list[Decision] = []
        self.last_verdict: dict[str, Any] | None = None
        self.window_started = clock()
        start = Decision(rollout_id, "running" if self.upcoming else "done", 0, start_share,
                         f"started at {start_share:g}%" + ("" if self.upcoming else
                                                           ": no step above it, nothing to judge"),
                         _now_iso(), replica, canary_version, stable_version)
        self.decision = start
        self.history.append(start)

    @property
    def share(self) -> float:
        return self.decision.share

    @property
    def running(self) -> bool:
        return self.decision.state == "running"

    @property
    def poll_s(self) -> float:
        """How often a host reads the shared decisions and asks the judge: a breach is acted on
        within this, so at most a second."""
        return min(1.0, self.policy.window_s / 4)

    def arm(self, version: int) -> Arm | None:
        if version == self.canary_version:
            return self.canary
        if version == self.stable_version:
            return self.stable
        return None

    def adopt(self, shared: list[Decision]) -> Decision | None:
        """Take the furthest decision another replica shared, when it is ahead of ours; returns it.
        A new step is judged on a fresh window and fresh feedback."""
        mine = [d for d in shared if d.rollout_id == self.id]
        best = furthest(mine)
        if best is None or best.rank <= self.decision.rank:
            return None
        self._enter(best)
        return best

    def behind(self, shared: list[Decision]) -> bool:
        """Whether the shared decisions lack ours (a write that failed, or a replica that wrote
        in between): then ours is written again."""
        best = furthest([d for d in shared if d.rollout_id == self.id])
        return self.decision.rank > 0 and (best is None or best.rank < self.decision.rank)

    def tick(self) -> Decision | None:
        """Judge now: a new decision (to share), or None."""
        if not self.running:
            return None
        now = self._clock()
        over = now - self.window_started >= self.policy.window_s
        verdict = judge(self.policy, self.canary, self.stable, over)
        if verdict is not None:
            self.last_verdict = {"action": verdict.action, "reason": verdict.reason, "time": _now_iso()}
        if verdict is not None and verdict.action == "rollback":
            return self._decide("rolled_back", ROLLED_BACK_RANK, 0.0, verdict.reason)
        if verdict is not None and verdict.action == "promote":
            rank = self.decision.rank + 1
            share = self.upcoming[rank - 1]
            state: State = "done" if rank == len(self.upcoming) else "running"
            return self._decide(state, rank, share, f"promoted to {share:g}%: {verdict.reason}")
        if over:  # no decision: the next window is judged on its own
            self.canary.reset_window()
            self.stable.reset_window()
            self.window_started = now
        return None

    def _decide(self, state: State, rank: int, share: float, reason: str) -> Decision:
        stats = {"canary": self.canary.summary(), "stable": self.stable.summary(),
                 "window_s": round(self._clock() - self.window_started, 3)}
        decision = Decision(self.id, state, rank, share, reason, _now_iso(), self.replica,
                            self.canary_version, self.stable_version, stats)
        self._enter(decision)
        return decision

    def _enter(self, decision: Decision) -> None:
        self.decision = decision
        self.history = [*self.history, decision][-HISTORY:]
        self.canary, self.stable = Arm(self.canary._rng), Arm(self.stable._rng)
        self.window_started = self._clock()

    def state(self) -> dict[str, Any]:
        """For the model's status."""
        return {"id": self.id, "state": self.decision.state, "canary_share": self.share,
                "canary_version": self.canary_version, "stable_version": self.stable_version,
                "next_step": (self.upcoming[self.decision.rank]
                              if self.running and self.decision.rank < len(self.upcoming) else None),
                "window_s": self.policy.window_s,
                "window_elapsed_s": round(self._clock() - self.window_started, 3),
                "window": {"canary": self.canary.summary(), "stable": self.stable.summary()},
                "last_verdict": self.last_verdict,
                "decisions": [d.to_dict() for d in self.history]}


def predicted_classes(outputs: np.ndarray) -> tuple[int, ...]:
    """Each row's predicted class index: argmax of the scores, or > 0.5 for one sigmoid output."""
    outputs = np.asarray(outputs)
    if outputs.ndim >= 2 and outputs.shape[-1] > 1:
        return tuple(int(i) for i in outputs.reshape(len(outputs), -1).argmax(axis=1))
    return tuple(int(p > 0.5) for p in outputs.reshape(len(outputs)))


def label_index(label: Any, classes: list[Any]) -> int | None:
    """A client's true label as a class index: a class value (as the schema names it), else a
    class index; None when it is neither."""
    for index, value in enumerate(classes):
        if label == value or (isinstance(label, str) and label == str(value)):
            return index
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(classes):
        return label
    return None


class FeedbackMemory:
    """The last ``capacity`` answers given by traffic split: request id -> (version, predicted
    class per row). Feedback is scored once: taking an id forgets it."""

    def __init__(self, capacity: int = 100_000):
        self.capacity = capacity
        self._answers: OrderedDict[str, tuple[int, tuple[int, ...]]] = OrderedDict()

    def remember(self, request_id: str, version: int, classes: tuple[int, ...]) -> None:
        self._answers[request_id] = (version, classes)
        if len(self._answers) > self.capacity:
            self._answers.popitem(last=False)

    def take(self, request_id: str) -> tuple[int, tuple[int, ...]] | None:
        return self._answers.pop(request_id, None)

    def __len__(self) -> int:
        return len(self._answers)
