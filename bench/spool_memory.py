"""What a capture spool write costs into new memory against memory a file already holds: the
replica's writer (``maas.capture_spool.write_spool``) spooling flushes of 156 requests of 64
digits-sized rows (64 x 64 float32 inputs, 64 x 10 outputs; ~19 KiB a request) into /dev/shm,
side by side in one run:

- ``new``: each flush a new file, all kept until the round ends (the spool growing under load,
  as with ``spool_reuse_mb: 0``), then deleted;
- ``reused``: each flush written over a blank kept from the round before (``spool_reuse_mb``: the
  compactor recycles compacted files, and reserves zeroed ones as it starts).

Round 1 of ``new`` may be the first time the machine touches that much memory: on a VM whose host
backs guest memory lazily (or takes freed memory back: virtio-balloon free page reporting) that
costs a fault to the hypervisor per page. ``--mib`` sets how much each round writes: more than the
machine has touched since boot shows it. CPU microseconds per request (the writing thread's), per
round. No Ray, no server.

    .venv/bin/python bench/spool_memory.py [--mib 600] [--rounds 3] [--idle-s 70]

``--idle-s``: the blanks sit untouched that long before each reused round (on this VM, memory
left alone for a minute costs more to write again than new memory: docs/serving-on-ray.md).

Last line: RESULT new_first_us=.. new_median_us=.. reused_median_us=.. mib=.. idle_s=..
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from maas.capture import Sample  # noqa: E402
from maas.capture_spool import SpoolView, blanks, recycle, spool_files, write_spool  # noqa: E402
from maas.data import DataSchema  # noqa: E402
from maas.serving.model import LoadedModel  # noqa: E402

REQUESTS_PER_FLUSH = 156  # flush_rows 10,000 of 64-row requests


def flush_samples(rng: np.random.Generator) -> list[Sample]:
    model = LoadedModel("digits_mlp", 1, DataSchema(input_shape=(8, 8), classes=list(range(10))), None, {})
    return [Sample(1.8e9 + i, f"{i:032x}", model, "v1", "default",
                   rng.integers(0, 17, (64, 8, 8)).astype(np.float32),
                   rng.dirichlet(np.ones(10), 64).astype(np.float32), 0.004)
            for i in range(REQUESTS_PER_FLUSH)]


def timed_round(folder: str, flushes: list[list[Sample]], reuse: bool) -> float:
    """CPU us per request to spool every flush; with ``reuse``, each file is recycled at once
    (the pool then holds one round's worth); without, all are deleted after the round."""
    sequence, view = itertools.count(1), SpoolView(folder)  # the writer's, as a replica has it
    spent = 0.0
    for samples in flushes:
        started = time.thread_time()
        [(path, _, _)] = write_spool(folder, samples, "bench", sequence.__next__, view)
        spent += time.thread_time() - started
        if reuse:
            recycle(path, folder, 1 << 40, 0)
    if not reuse:
        for path in spool_files(folder):
            path.unlink()
    return spent * 1e6 / (len(flushes) * REQUESTS_PER_FLUSH)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=600, help="MiB each round writes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle-s", type=float, default=0.0,
                        help="leave the blanks untouched this long before each reused round")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    distinct = [flush_samples(rng) for _ in range(8)]  # the arrays cycle: their contents do not matter
    flush_mib = sum(s.inputs.nbytes + s.outputs.nbytes for s in distinct[0]) / (1 << 20)
    count = max(1, round(args.mib / flush_mib))
    flushes = [distinct[i % len(distinct)] for i in range(count)]
    root = tempfile.mkdtemp(prefix="maas-spool-bench-", dir="/dev/shm")
    new_folder, reused_folder = f"{root}/new", f"{root}/reused"
    try:
        sequence = itertools.count(1)  # the blanks the reused rounds write over: one round's worth
        written = [write_spool(reused_folder, s, "bench", sequence.__next__)[0][0] for s in flushes]
        for path in written:
            recycle(path, reused_folder, 1 << 40, 0)
        new, reused = [], []
        for number in range(1, args.rounds + 1):
            new.append(timed_round(new_folder, flushes, reuse=False))
            time.sleep(args.idle_s)
            reused.append(timed_round(reused_folder, flushes, reuse=True))
            print(f"round {number}: {count * flush_mib:.0f} MiB in {count} flushes; us of CPU a 64-row "
                  f"request: new memory {new[-1]:.1f}, reused {reused[-1]:.1f}"
                  + (f" (blanks idle {args.idle_s:.0f} s first)" if args.idle_s else ""), flush=True)
        assert len(blanks(reused_folder)) == count
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"new memory: round 1 {new[0]:.1f} us, median {statistics.median(new):.1f} "
          f"(min {min(new):.1f}, max {max(new):.1f}); reused: median {statistics.median(reused):.1f} "
          f"(min {min(reused):.1f}, max {max(reused):.1f})")
    print(f"RESULT new_first_us={new[0]:.1f} new_median_us={statistics.median(new):.1f} "
          f"reused_median_us={statistics.median(reused):.1f} mib={count * flush_mib:.0f} "
          f"idle_s={args.idle_s:g}")


if __name__ == "__main__":
    main()
