"""What one capture flush costs the replica: the Parquet table of 1,000 requests of 64 digits rows
(64,000 rows; inputs are the scikit-learn digits' pixel values, 0-16, the way clients send them) built
by ``maas.capture.requests_table`` and written with the shipped options, against the same table
written with snappy (the options before) and uncompressed. Milliseconds per flush (median of the
repeats, min-max) and the file size. No Ray, no server.

    .venv/bin/python bench/capture_write.py [--requests 1000] [--rows 64] [--repeats 15]

Last line: RESULT rows=.. build_ms=.. shipped_ms=.. shipped_kib=.. snappy_ms=.. snappy_kib=.. none_ms=..
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from maas.capture import WRITE_OPTIONS, Sample, requests_table, write_options  # noqa: E402
from maas.data import DataSchema  # noqa: E402
from maas.serving.model import LoadedModel  # noqa: E402


def samples(requests: int, rows: int) -> list[Sample]:
    from sklearn.datasets import load_digits

    pixels = load_digits().images.astype(np.float32)
    model = LoadedModel("digits_mlp", 1, DataSchema(input_shape=(8, 8), classes=list(range(10))), None, {})
    rng = np.random.default_rng(0)
    out = []
    for i in range(requests):
        inputs = pixels[rng.integers(0, len(pixels), rows)]
        outputs = rng.dirichlet(np.ones(10), rows).astype(np.float32)
        out.append(Sample(1.8e9 + i / 1000, f"{i:032x}", model, "v1", "default", inputs, outputs, 0.004))
    return out


def timed(action: Any, repeats: int) -> list[float]:
    action()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1e3)
    return times


def main() -> None:
    import pyarrow.parquet as pq

    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    batch = samples(args.requests, args.rows)
    build = timed(lambda: requests_table(batch), args.repeats)
    table = requests_table(batch)
    plain = {key: value for key, value in WRITE_OPTIONS.items() if key != "compression_level"}
    options = {"shipped": write_options(table), "snappy": {**plain, "compression": "snappy"},
               "none": {**plain, "compression": "none"}}
    figures: dict[str, tuple[float, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{table.num_rows} rows ({args.requests} requests of {args.rows}); building the table: "
              f"{statistics.median(build):.1f} ms (min {min(build):.1f}, max {max(build):.1f})")
        for name, kwargs in options.items():
            path = f"{tmp}/{name}.parquet"
            times = timed(lambda kwargs=kwargs, path=path: pq.write_table(table, path, **kwargs),
                          args.repeats)
            figures[name] = (statistics.median(times), os.path.getsize(path) // 1024)
            print(f"write {name:<8} {figures[name][0]:6.1f} ms (min {min(times):.1f}, max {max(times):.1f}), "
                  f"{figures[name][1]:,} KiB")
    print(f"RESULT rows={table.num_rows} build_ms={statistics.median(build):.1f} "
          + " ".join(f"{name}_ms={ms:.1f} {name}_kib={kib}" for name, (ms, kib) in figures.items()))


if __name__ == "__main__":
    main()
