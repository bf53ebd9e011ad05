"""The audit trail's own work per audited prediction, in this process (no Ray, no HTTP): the
request path (``Dataplane._audit`` on real Starlette requests, the entry it queues) and the writer
(``AuditLog.extend``: canonical text, sha256 chain, the file append), a second's worth of entries
at a time as serving flushes them. Compare with the replica's CPU per request that
bench/serve_load.py --audit measures live.

    .venv/bin/python bench/audit_inprocess.py [--entries 2000] [--repeats 20]

Last line: RESULT request_path_us=.. writer_us=.. (medians over the repeats)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SCOPE = {"type": "http", "method": "POST", "path": "/v1/models/digits_mlp:predict", "query_string": b"",
         "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
                     (b"content-length", b"300"), (b"user-agent", b"wrk"),
                     (b"x-request-id", b"0f6f1d0e-3c1b-4e58-9d0b-2f7c1c1f8a55")]}


def one_second(entries: int, log: Any) -> tuple[float, float]:
    """(request path, writer) microseconds an entry, for ``entries`` audited predictions written
    by ``log`` (one ``AuditLog`` for the whole run, as a replica keeps one)."""
    from starlette.requests import Request

    from serve.dataplane import Dataplane

    config = types.SimpleNamespace(audit_error_rate=1.0, audit_sample_rate=1.0, audit_payloads=False)
    dataplane = types.SimpleNamespace(config=config, audit_entries=[], _key_id=Dataplane._key_id,
                                      _start_flusher=lambda: None)
    requests = []
    for _ in range(entries):
        request = Request({**SCOPE, "state": {}})
        request.state.key_id = None  # authorised without a key, as _infer leaves it
        requests.append(request)
    started = time.perf_counter()
    for request in requests:
        Dataplane._audit(dataplane, request, "digits_mlp", "1", 200, "v1", started, 1, None)
    queued = time.perf_counter()
    log.extend(dataplane.audit_entries)
    written = time.perf_counter()
    return (queued - started) / entries * 1e6, (written - queued) / entries * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=2000, help="audited predictions a flush")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    from maas.audit import AuditLog

    with tempfile.TemporaryDirectory() as directory:
        log = AuditLog(directory)
        one_second(args.entries, log)  # imports and the day's file
        runs = [one_second(args.entries, log) for _ in range(args.repeats)]
    request_path = statistics.median(r[0] for r in runs)
    writer = statistics.median(r[1] for r in runs)
    print(f"per audited prediction: request path {request_path:.2f} us, writer {writer:.2f} us "
          f"(medians of {args.repeats} flushes of {args.entries}; request path "
          f"{min(r[0] for r in runs):.2f}-{max(r[0] for r in runs):.2f}, writer "
          f"{min(r[1] for r in runs):.2f}-{max(r[1] for r in runs):.2f})")
    print(f"RESULT request_path_us={request_path:.2f} writer_us={writer:.2f}")


if __name__ == "__main__":
    main()
