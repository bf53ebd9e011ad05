"""Closed-loop HTTP load that records every answer, for fault and soak measurements.

``wrk`` gives totals; a fault needs the timeline: which requests failed, and the longest stretch in
which nothing succeeded. ``LoadProbe`` runs ``clients`` concurrent keep-alive connections (aiohttp,
on an event loop in a thread of its own, so the caller can kill things meanwhile), cycles through a
list of request kinds, and keeps one ``Answer`` per request. ``summary`` turns a slice of the
record into the figures the reliability section reports.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Shot:
    """One kind of request: ``expect`` is the status a correct server answers it with."""

    kind: str
    path: str
    body: bytes
    expect: int = 200
    method: str = "POST"


@dataclass(frozen=True)
class Answer:
    kind: str
    started: float   # time.monotonic()
    ended: float
    status: int | str  # HTTP status, or the exception's name (reset, refused, timeout)
    expect: int
    detail: str = ""   # the start of an unexpected answer's body, or the exception's message

    @property
    def ok(self) -> bool:
        return self.status == self.expect

    @property
    def latency_ms(self) -> float:
        return (self.ended - self.started) * 1e3


@dataclass
class LoadProbe:
    base_url: str
    shots: Sequence[Shot]
    clients: int = 24
    timeout_s: float = 10.0
    headers: dict[str, str] = field(default_factory=dict)
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> LoadProbe:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 30)

    def __enter__(self) -> LoadProbe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _run(self) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        connector = aiohttp.TCPConnector(limit=self.clients, force_close=False)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector,
                                         headers=self.headers) as session:
            await asyncio.gather(*(self._client(session, i) for i in range(self.clients)))

    async def _client(self, session, index: int) -> None:
        turn = index
        while not self._stop.is_set():
            shot = self.shots[turn % len(self.shots)]
            turn += 1
            started = time.monotonic()
            try:
                async with session.request(shot.method, self.base_url + shot.path, data=shot.body,
                                           headers={"Content-Type": "application/json"}) as reply:
                    body = await reply.read()
                    status: int | str = reply.status
                    detail = "" if status == shot.expect else body[:200].decode(errors="replace")
            except Exception as exc:  # noqa: BLE001 - every failure is a data point
                status, detail = type(exc).__name__, str(exc)[:200]
                await asyncio.sleep(0.01)  # a refused connection must not spin the loop
            self.answers.append(Answer(shot.kind, started, time.monotonic(), status, shot.expect, detail))

    def wait_answered(self, count: int, timeout: float = 120) -> None:
        """Until ``count`` correct answers came back (the server is up and warm)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(1 for a in self.answers[-count * 2:] if a.ok) >= count:
                return
            time.sleep(0.2)
        raise TimeoutError(f"fewer than {count} correct answers in {timeout} s; "
                           f"last: {[a.status for a in self.answers[-5:]]}")


def longest_gap(answers: Sequence[Answer], start: float, end: float) -> float:
    """The longest time within [start, end] in which no request got its expected answer."""
    edges = [start] + sorted(a.ended for a in answers if a.ok and start <= a.ended <= end) + [end]
    return max(b - a for a, b in zip(edges, edges[1:], strict=False))


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summary(answers: Sequence[Answer], start: float, end: float) -> dict[str, float | int | dict]:
    """Figures for the requests that ended in [start, end]: how many, how many failed (any answer
    but the expected one; 5xx and connection errors counted apart), the longest stretch without a
    correct answer, p50/p99 latency of the correct ones."""
    window = [a for a in answers if start <= a.ended <= end]
    failed = [a for a in window if not a.ok]
    kinds: dict[str, int] = {}
    examples: dict[str, str] = {}
    for answer in failed:
        key = str(answer.status)
        kinds[key] = kinds.get(key, 0) + 1
        examples.setdefault(key, answer.detail)
    latencies = [a.latency_ms for a in window if a.ok]
    return {
        "requests": len(window),
        "failed": len(failed),
        "failed_pct": 100.0 * len(failed) / max(1, len(window)),
        "errors_5xx": sum(1 for a in failed if isinstance(a.status, int) and a.status >= 500),
        "connection_errors": sum(1 for a in failed if isinstance(a.status, str)),
        "failures_by_status": kinds,
        "failure_examples": examples,
        "longest_gap_s": longest_gap(answers, start, end),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "rps": len(window) / max(1e-9, end - start),
    }
