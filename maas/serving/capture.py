"""Captured traffic in one replica: the sampled requests of one model and the feedback labels sent
for them, held in a bounded buffer and written by a background task. The request path only draws
the sample and appends a tuple to a deque: no copy, no I/O, no lock. When the buffer is full,
samples are dropped and counted (the model's status, ``maas_capture_dropped_total``); a request
never waits for capture.

The writer spools the requests' arrays as they are (``maas.capture_spool``: a copy into the page
cache) and a compactor process at nice 19 (``maas.capture_compactor``, started here) turns the
spool into the Parquet layout of ``maas.capture``: the encoding, most of capture's cost, runs on
CPU time serving leaves idle. The spool is bounded too (``max_spool_mb``): past it, samples are
dropped and counted. ``compaction: inline`` compacts in the writer's thread instead, ``external``
leaves it to a compactor run elsewhere. Feedback labels are few and small: written as Parquet
directly.

One ``Capture`` per model per replica (``ModelHost.capture``), made and changed by the model's
settings (``capture: {rate: 0.1}``) through ``reconfigure``; flushed every ``flush_s`` seconds or
``flush_rows`` rows, when the settings turn it off, and when the replica shuts down.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import subprocess
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from maas import capture_compactor
from maas.capture import Sample, write_feedback
from maas.capture_spool import (
    SpoolView,
    blank_bytes,
    drop_blanks,
    spool_bytes,
    spool_files,
    spool_place,
    write_spool,
)
from maas.serving.settings import CaptureSettings

logger = logging.getLogger("ray.serve")

_METRICS: dict[str, Any] = {}


def _metrics() -> dict[str, Any]:
    """Counters in Ray's metrics (so Prometheus sees them), made once per process; none outside Ray."""
    if not _METRICS:
        try:
            import ray

            if not ray.is_initialized():
                return {}
            from ray.util import metrics

            _METRICS["rows"] = metrics.Counter("maas_capture_rows_total", "Captured rows written",
                                               tag_keys=("model", "version"))
            _METRICS["dropped"] = metrics.Counter(
                "maas_capture_dropped_total",
                "Captured requests not written: buffer full, or a write that failed with no room to retry",
                tag_keys=("model", "reason"))
        except Exception:  # metrics are a nicety: capture goes on without them
            return {}
    return _METRICS


class Capture:
    """Sampling, the bounded buffer and the writer of one model in one replica. ``rng`` draws the
    samples (tests: seeded); ``write_spool`` / ``write_feedback`` write (tests: failing ones)."""

    def __init__(self, model_name: str, registry_root: str, settings: CaptureSettings, replica: str,
                 rng: Callable[[], float] = random.random,
                 write_spool: Callable[..., list[tuple[str, int, int]]] = write_spool,
                 write_feedback: Callable[..., list[str]] = write_feedback):
        self.model_name, self.registry_root = model_name, registry_root
        self.writer = f"{replica}-{uuid.uuid4().hex[:6]}"
        self.spool = ""  # where this model's spool is (``apply``: the settings' ``spool``)
        self.spool_note = ""
        self.moved_from: list[str] = []  # spools left where the settings no longer put it
        self._rng, self._write_spool, self._write_feedback = rng, write_spool, write_feedback
        self.compaction = "process"
        self.compactor: Any = None  # the compactor process (compaction "process")
        self.compactor_starts = 0
        self.compacted = capture_compactor.Compacted()  # compaction "inline": what it did
        self._seq = itertools.count(1)
        self.buffer: deque[Sample] = deque()
        self.feedback: deque[tuple[float, str, list[str]]] = deque()
        self.buffered_rows = 0
        self.rate, self.flush_s, self.flush_rows, self.max_rows = 0.0, 5.0, 10_000, 100_000
        self.max_spool_bytes = 0
        self.apply(settings)
        self.sampled = self.dropped = self.dropped_rows = self.feedback_dropped = 0
        self.dropped_spool_full = 0  # of ``dropped``: the spool held max_spool_mb
        self.written_rows = self.written_files = self.feedback_written = 0
        self.write_errors = 0
        self.last_error: str | None = None
        self.last_write: float | None = None
        self.dropped_unwritten = 0  # of ``dropped``: a failed write with no room left to keep it
        self._reported = (0, 0, 0)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._lock: asyncio.Lock | None = None
        self.closed = False

    def apply(self, settings: CaptureSettings) -> None:
        """New settings, live: the buffer and its counts stay."""
        self.rate, self.flush_s = settings.rate, settings.flush_s
        self.flush_rows, self.max_rows = settings.flush_rows, settings.max_buffered_rows
        place = spool_place(self.registry_root, self.model_name, settings.spool, settings.max_spool_mb << 20)
        if self.spool and place.directory != self.spool:  # moved live: the old one is emptied
            self.stop_compactor()  # its last pass takes the old spool; the writer, what it leaves
            self.moved_from.append(self.spool)
        if place.directory != self.spool:
            self.view = SpoolView(place.directory)  # the writer's picture of it (its thread's alone)
        self.spool, self.max_spool_bytes, self.spool_note = place.directory, place.max_bytes, place.note
        if place.note:
            logger.info("%s: capture %s", self.model_name, place.note)
        self.compaction = settings.compaction
        reuse = min(settings.spool_reuse_mb << 20, self.max_spool_bytes)
        self.policy = capture_compactor.Policy(idle_pct=settings.compact_idle_pct,
                                               max_delay_s=settings.compact_within_s,
                                               max_spool_bytes=self.max_spool_bytes,
                                               reuse_bytes=reuse,
                                               reserve_bytes=round(reuse * settings.rate)
                                               if place.medium == "memory" else 0)
        if self.compaction != "process":
            self.stop_compactor()

    # --- the request path ------------------------------------------------------------------

    def offer(self, request_id: str | None, model: Any, protocol: str, route: str, inputs: np.ndarray,
              outputs: np.ndarray, latency_s: float) -> None:
        """One answered request: sampled at ``rate``; appended unless the buffer is full."""
        if self.rate < 1.0 and self._rng() >= self.rate:
            return
        rows = len(inputs)
        if self.buffered_rows + rows > self.max_rows:
            self.dropped += 1
            self.dropped_rows += rows
            return
        self.sampled += 1
        self.buffered_rows += rows
        self.buffer.append(Sample(time.time() - latency_s, request_id, model, protocol, route, inputs,
                                  outputs, latency_s))
        if self.buffered_rows >= self.flush_rows and self._wake is not None:
            self._wake.set()

    def record_feedback(self, request_id: str, labels: list[str]) -> bool:
        """A client's labels for an earlier answer (one per request row, as text); False when the
        buffer is full (dropped and counted)."""
        if len(self.feedback) >= self.max_rows:
            self.feedback_dropped += 1
            return False
        self.feedback.append((time.time(), request_id, labels))
        if len(self.feedback) >= self.flush_rows and self._wake is not None:
            self._wake.set()
        return True

    # --- writing ---------------------------------------------------------------------------

    def start(self) -> None:
        """The background writer, on the running event loop."""
        if self._task is None or self._task.done():
            self._wake, self._lock = asyncio.Event(), asyncio.Lock()
            self._task = asyncio.get_running_loop().create_task(self._run())
        if self.compaction == "process" and self.rate > 0:  # it reserves spool memory, then
            self._compact()  # takes what a replica before left

    async def _run(self) -> None:
        while not self.closed:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.flush_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # never let the writer die; what went wrong is in the status
                logger.exception("%s: capture flush failed", self.model_name)

    def _take(self) -> tuple[list[Sample], list[tuple[float, str, list[str]]]]:
        samples, self.buffer, self.buffered_rows = list(self.buffer), deque(), 0
        feedback, self.feedback = list(self.feedback), deque()
        return samples, feedback

    async def flush(self) -> None:
        """Write what waits, in a thread (off the event loop); one write at a time."""
        lock = self._lock or asyncio.Lock()
        async with lock:
            samples, feedback = self._take()
            if samples or feedback:
                outcome = await asyncio.to_thread(self._write, samples, feedback)
                self._settle(samples, feedback, *outcome)
            self._report_dropped()

    def flush_now(self) -> None:
        """Write what waits in this thread (a replica shutting down: no event loop to wait on)."""
        samples, feedback = self._take()
        if samples or feedback:
            self._settle(samples, feedback, *self._write(samples, feedback))

    async def close(self) -> None:
        """Stop the writer once its current write is done, and write what is left (settings
        turned capture off)."""
        self.closed = True
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            self._wake.set()  # it writes what waits, sees closed, and ends
            try:
                await task
            except Exception:  # noqa: BLE001 - the final flush below still runs
                pass
        await self.flush()
        await asyncio.to_thread(self._hand_over, 0.0)

    @property
    def compactor_running(self) -> bool:
        return self.compactor is not None and self.compactor.poll() is None

    def _hand_over(self, wait_s: float) -> None:
        """Capture ending (off, or the replica going): the compactor's last pass takes what was
        just spooled (waited for up to ``wait_s``); what no compactor holds is compacted here
        (a compactor started moments ago may not have lived to see it). The spool's lock keeps
        the two from writing a row twice."""
        self.stop_compactor(wait_s)
        self._empty_moved()
        if self.compaction != "external" and spool_files(self.spool):
            self._compact_here()
        if self.compaction == "inline":  # a compactor process frees its blanks as it exits
            drop_blanks(self.spool)

    def stop_compactor(self, wait_s: float = 0.0) -> None:
        """Tell the compactor to compact what is left and exit; wait up to ``wait_s`` for it (a
        replica shutting down: Ray kills a worker's children once it exits, so a replica that
        left at once would cut the last pass short; what it leaves, the next compactor takes)."""
        compactor, running, self.compactor = self.compactor, self.compactor_running, None
        if running:
            compactor.terminate()
            try:
                compactor.wait(timeout=wait_s) if wait_s > 0 else None
            except subprocess.TimeoutExpired:
                logger.warning("%s: capture compactor still at work after %.0f s; its spool waits for "
                               "the next one", self.model_name, wait_s)

    def _write(self, samples: list[Sample], feedback: list[tuple[float, str, list[str]]]) -> tuple[Any, ...]:
        """(spool files written, feedback files written, the samples' error, the feedback's error,
        whether the spool was full)."""
        files = feedback_files = None
        samples_error = feedback_error = None
        self._empty_moved()
        spool_full = bool(samples) and self.view.holds_at_least(self.max_spool_bytes)
        if samples and not spool_full:
            try:
                files = self._write_spool(self.spool, samples, self.writer, self._next_seq, self.view)
            except Exception as exc:  # noqa: BLE001 - kept for a retry, reported in the status
                samples_error = exc
            else:
                self._compact()
        if feedback:
            try:
                feedback_files = self._write_feedback(self.registry_root, self.model_name, feedback,
                                                      self.writer, self._next_seq)
            except Exception as exc:  # noqa: BLE001
                feedback_error = exc
        return files, feedback_files, samples_error, feedback_error, spool_full

    def _compact(self) -> None:
        """After a spool write (in the writer's thread): compact it here (inline), or see that a
        compactor process runs (started on the first write; again if it died; none once closing:
        ``close`` and ``shutdown`` see to what is left)."""
        if self.compaction == "inline":
            self._compact_here()
        elif self.compaction == "process" and not self.closed and not self.compactor_running:
            try:
                self.compactor = capture_compactor.start(self.spool, self.registry_root, self.model_name,
                                                         self.policy)
                self.compactor_starts += 1
            except OSError as exc:  # the spool keeps the rows: a later write tries again
                self.compacted.last_error = f"compactor not started: {exc}"[:500]

    def _empty_moved(self) -> None:
        """Spools the settings moved away from (``spool: memory`` <-> ``disk``): compacted here,
        each forgotten once empty (until then a compactor's last pass may hold it: next time)."""
        for old in list(self.moved_from):
            if self.compaction != "external" and spool_files(old):
                self._compact_here(old)
            if not spool_files(old) or self.compaction == "external":
                drop_blanks(old)
                self.moved_from.remove(old)

    def _compact_here(self, spool: str | None = None) -> None:
        """A pass in this thread, unless a compactor (another replica's) holds the spool."""
        try:
            done = capture_compactor.compact_if_free(spool or self.spool, self.registry_root,
                                                     self.model_name, self.writer,
                                                     reuse_bytes=0 if spool else self.policy.reuse_bytes)
        except Exception as exc:  # noqa: BLE001 - the rows stay in the spool for the next pass
            self.compacted.last_error = f"{type(exc).__name__}: {exc}"[:500]
        else:
            if done is not None:
                self.compacted.add(done)

    def shutdown(self, wait_s: float = 10.0) -> None:
        """A replica shutting down (no event loop to wait on): spool what is held, then hand over
        (``_hand_over``), waiting up to ``wait_s`` for the compactor's last pass."""
        self.closed = True
        try:
            self.flush_now()
        finally:
            self._hand_over(wait_s)

    def _next_seq(self) -> int:
        return next(self._seq)

    def _settle(self, samples: list[Sample], feedback: list[tuple[float, str, list[str]]], files: Any,
                feedback_files: Any, samples_error: Exception | None,
                feedback_error: Exception | None, spool_full: bool = False) -> None:
        """Count what was written; put back what failed when there is room (the next flush
        retries it), else drop and count it."""
        if spool_full:
            self.dropped += len(samples)
            self.dropped_rows += sum(len(s.inputs) for s in samples)
            self.dropped_spool_full += len(samples)
            logger.warning("%s: capture spool %s holds max_spool_mb; %d captured requests dropped",
                           self.model_name, self.spool, len(samples))
        if files:
            metrics = _metrics()
            for _, version, rows in files:
                self.written_rows += rows
                if metrics:
                    metrics["rows"].inc(rows, tags={"model": self.model_name, "version": str(version)})
            self.written_files += len(files)
        if feedback_files:
            self.written_files += len(feedback_files)
            self.feedback_written += len(feedback)
        if files is not None or feedback_files is not None:
            self.last_write = time.time()
        for error in (samples_error, feedback_error):
            if error is not None:
                self.write_errors += 1
                self.last_error = f"{type(error).__name__}: {error}"[:500]
                logger.warning("%s: captured traffic not written (kept for the next write if there "
                               "is room): %s", self.model_name, self.last_error)
        if samples_error is not None:
            rows = sum(len(s.inputs) for s in samples)
            if self.buffered_rows + rows <= self.max_rows:
                self.buffer.extendleft(reversed(samples))
                self.buffered_rows += rows
            else:
                self.dropped += len(samples)
                self.dropped_rows += rows
                self.dropped_unwritten += len(samples)
        if feedback_error is not None:
            room = max(0, self.max_rows - len(self.feedback))
            self.feedback.extendleft(reversed(feedback[-room:] if room else []))
            self.feedback_dropped += len(feedback) - min(room, len(feedback))

    def _report_dropped(self) -> None:
        metrics = _metrics()
        spool_full, unwritten = self.dropped_spool_full, self.dropped_unwritten
        counts = (self.dropped - unwritten - spool_full, unwritten, spool_full)
        if metrics:
            for reason, now, before in zip(("buffer_full", "write_failed", "spool_full"), counts,
                                           self._reported, strict=True):
                if now > before:
                    metrics["dropped"].inc(now - before, tags={"model": self.model_name, "reason": reason})
        self._reported = counts

    def state(self) -> dict[str, Any]:
        """For the model's status."""
        from maas.capture import model_dir

        return {"rate": self.rate, "path": model_dir(self.registry_root, self.model_name),
                "writer": self.writer, "spool": self._spool_state(), "sampled_requests": self.sampled,
                "buffered_requests": len(self.buffer), "buffered_rows": self.buffered_rows,
                "max_buffered_rows": self.max_rows, "dropped_requests": self.dropped,
                "dropped_rows": self.dropped_rows, "written_rows": self.written_rows,
                "written_files": self.written_files, "feedback_buffered": len(self.feedback),
                "feedback_written": self.feedback_written, "feedback_dropped": self.feedback_dropped,
                "dropped_spool_full": self.dropped_spool_full,
                "write_errors": self.write_errors, "last_error": self.last_error,
                "last_write": self.last_write}

    def _spool_state(self) -> dict[str, Any]:
        """Where the spool stands: what waits in it, and the compactor's last report (its counts
        are since it started, and may take in other replicas' spool files too)."""
        compactor = self.compactor
        report = (capture_compactor.status(self.spool) if self.compaction == "process"
                  else {"inline": True, **vars(self.compacted)})
        return {"path": self.spool, "files": len(spool_files(self.spool)), "bytes": spool_bytes(self.spool),
                "max_bytes": self.max_spool_bytes, "note": self.spool_note,
                "reusable_bytes": blank_bytes(self.spool),
                "max_reusable_bytes": self.policy.reuse_bytes,
                "moved_from": list(self.moved_from),
                "compactor_pid": compactor.pid if self.compactor_running else None,
                "compactor_starts": self.compactor_starts, "compactor": report}
