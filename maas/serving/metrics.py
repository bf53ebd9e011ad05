"""Request counts buffered between flushes to Ray's metrics."""

from __future__ import annotations


class CountBuffer:
    """Counts by tag set, drained into a metrics Counter once a second instead of once per
    request: a ``Counter.inc`` with tags took ~8% of the ingress's CPU under load."""

    def __init__(self) -> None:
        self._counts: dict[tuple[tuple[str, str], ...], int] = {}

    def add(self, tags: dict[str, str], count: int = 1) -> None:
        key = tuple(sorted(tags.items()))
        self._counts[key] = self._counts.get(key, 0) + count

    def drain(self) -> list[tuple[dict[str, str], int]]:
        counts, self._counts = self._counts, {}
        return [(dict(key), count) for key, count in counts.items()]
