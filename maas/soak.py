"""A soak: minutes of mixed traffic against the shipped app while its memory and latency are
watched (issue 15, item 9). ``bench/soak.py`` runs it for 10 minutes; ``tests/chaos`` runs a
60-second one.

Traffic, from ``clients`` keep-alive connections: single-row and 64-row TF Serving REST
requests, single-row Open Inference Protocol requests, and a share of invalid requests (each must
get its 400); every ``swap_every_s`` a new version is registered and the app's registry polling
swaps to it. Every ``sample_every_s`` the resident memory of every Serve replica, proxy and
HAProxy process is summed; per minute (or per ``bucket_s``) the p99 of correct answers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maas.loadprobe import Answer, LoadProbe, Shot, percentile, summary


def mixed_shots() -> list[Shot]:
    """Eight requests a cycle: 4 single-row v1, 1 64-row v1, 2 single-row v2, 1 invalid."""
    from maas.faults import single_row_shots

    v1, v2 = single_row_shots()
    row = [[0.1] * 8] * 8
    many = Shot("v1_64", v1.path, json.dumps({"instances": [row] * 64}).encode())
    bad = Shot("invalid", v1.path, json.dumps({"instances": [[[0.1] * 7] * 8]}).encode(),  # a 400
               expect=400)
    return [v1, many, v1, v2, v1, bad, v1, v2]


@dataclass
class SoakRecord:
    started: float
    memory: list[tuple[float, float, int]] = field(default_factory=list)  # (t, MiB, processes)
    swaps: list[tuple[float, int]] = field(default_factory=list)          # (t, version)


def memory_growth_pct(samples: Sequence[tuple[float, float, int]], warmup_s: float,
                      started: float) -> float:
    """Growth of summed RSS from the first samples after warm-up to the last ones: the mean of
    the first three samples past ``warmup_s`` against the mean of the last three."""
    settled = [mib for t, mib, _ in samples if t - started >= warmup_s]
    if len(settled) < 2:
        return float("nan")
    first = settled[:3]
    last = settled[-3:]
    base = sum(first) / len(first)
    return 100.0 * (sum(last) / len(last) - base) / base


def p99_per_bucket(answers: Sequence[Answer], started: float, ended: float,
                   bucket_s: float) -> list[float]:
    """p99 latency (ms) of the correct answers in each ``bucket_s`` window from ``started``."""
    buckets: list[list[float]] = []
    edge = started
    while edge + bucket_s <= ended + 1e-6:
        buckets.append([a.latency_ms for a in answers if a.ok and edge <= a.ended < edge + bucket_s])
        edge += bucket_s
    return [percentile(b, 99) for b in buckets]


def run_soak(base_url: str, seconds: float, sample: Callable[[], tuple[float, int]],
             swap: Callable[[], int], swap_every_s: float = 120, sample_every_s: float = 10,
             bucket_s: float = 60, warmup_s: float = 60, clients: int = 24,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the traffic for ``seconds``; ``sample()`` gives (summed RSS MiB, process count),
    ``swap()`` registers a new version and returns its number."""
    with LoadProbe(base_url, mixed_shots(), clients=clients) as probe:
        probe.wait_answered(100)
        record = SoakRecord(started=time.monotonic())
        next_swap = record.started + swap_every_s
        next_sample = record.started
        end = record.started + seconds
        while (now := time.monotonic()) < end:
            if now >= next_sample:
                mib, count = sample()
                record.memory.append((now, mib, count))
                next_sample += sample_every_s
            if now >= next_swap:
                record.swaps.append((now, swap()))
                log(f"[soak] {now - record.started:.0f} s: registered version {record.swaps[-1][1]}")
                next_swap += swap_every_s
            time.sleep(0.2)
        mib, count = sample()
        record.memory.append((time.monotonic(), mib, count))
        finished = time.monotonic()
    return soak_figures(probe.answers, record, finished, bucket_s, warmup_s)


def soak_figures(answers: Sequence[Answer], record: SoakRecord, finished: float, bucket_s: float,
                 warmup_s: float) -> dict[str, Any]:
    whole = summary(answers, record.started, finished)
    p99s = p99_per_bucket(answers, record.started, finished, bucket_s)
    unexpected_5xx = sum(1 for a in answers if record.started <= a.ended <= finished
                         and isinstance(a.status, int) and a.status >= 500)
    return {
        "minutes": round((finished - record.started) / 60, 2),
        "requests": whole["requests"],
        "failed": whole["failed"],
        "failures_by_status": whole["failures_by_status"],
        "errors_5xx": unexpected_5xx,
        "rss_first_mib": round(record.memory[0][1], 1) if record.memory else float("nan"),
        "rss_last_mib": round(record.memory[-1][1], 1) if record.memory else float("nan"),
        "rss_growth_pct": round(memory_growth_pct(record.memory, warmup_s, record.started), 2),
        "p99_per_bucket_ms": [round(p, 1) for p in p99s],
        "p99_first_ms": round(p99s[0], 1) if p99s else float("nan"),
        "p99_last_ms": round(p99s[-1], 1) if p99s else float("nan"),
        "swaps": [v for _, v in record.swaps],
        "kinds": sorted({a.kind for a in answers}),
        "memory": [(round(t - record.started, 1), round(m, 1), n) for t, m, n in record.memory],
    }


def result_line(figures: dict[str, Any]) -> str:
    return (f"RESULT minutes={figures['minutes']} rss_growth_pct={figures['rss_growth_pct']} "
            f"p99_first_ms={figures['p99_first_ms']} p99_last_ms={figures['p99_last_ms']} "
            f"errors_5xx={figures['errors_5xx']} failed={figures['failed']} "
            f"requests={figures['requests']}")


def republish(registry_root: str, model: str = "digits_mlp") -> int:
    """Register a copy of the newest version as a new one (what a retrain would publish)."""
    from maas.registry import Registry

    registry = Registry(registry_root)
    newest = registry.get(model)
    return registry.publish(model, Path(newest.uri), {**newest.metadata, "labels": []}).version
