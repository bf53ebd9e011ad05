"""Batch scoring throughput, side by side in one run: N rows of the digits MLP read from Parquet and
written back as Parquet with the prediction and class probabilities, by

  plain: one process, what a careful user writes: pandas reads the file, the model is one traced
         `tf.function` called on 4096-row chunks (TensorFlow's own threads use every core), pandas
         writes the result;
  ours:  `python -m maas score` (Ray Data: read_parquet -> map_batches over a pool of model-holding
         actors -> write_parquet) on a local Ray instance, Ray's start-up excluded, its overhead paid.

    .venv/bin/python bench/score_throughput.py [--rows 1000000] [--rounds 2] [--actors N]

Rounds alternate the order. Last line: RESULT rows=.. plain_rows_per_s=.. ours_rows_per_s=.. ratio=..
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.serve_load import publish_model  # noqa: E402

BATCH = 4096


def write_rows(path: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    flat = (rng.random((rows, 64), dtype=np.float32) * 16).round(0)
    table = pa.table({"row_id": np.arange(rows), **{f"p{i}": flat[:, i] for i in range(64)}})
    pq.write_table(table, path, row_group_size=65536)


def plain(root: str, source: Path, out: Path) -> float:
    import pandas as pd

    from maas.serving.model import LoadedModel

    model = LoadedModel.from_registry(root, "digits_mlp", "latest")  # the traced call, warmed up
    started = time.perf_counter()
    frame = pd.read_parquet(source)
    x = frame[[f"p{i}" for i in range(64)]].to_numpy(np.float32).reshape(-1, 8, 8)
    probabilities = np.concatenate([model.predict(x[i:i + BATCH]) for i in range(0, len(x), BATCH)])
    result = pd.DataFrame({"row_id": frame["row_id"], "prediction": probabilities.argmax(axis=1).astype(str)})
    for c in range(probabilities.shape[1]):
        result[f"probability_{c}"] = probabilities[:, c]
    result.to_parquet(out)
    return len(frame) / (time.perf_counter() - started)


def ours(root: str, source: Path, out: Path, actors: int | None) -> float:
    from maas.scoring import score

    summary = score(root, "digits_mlp", str(source), str(out), actors=actors, batch_size=BATCH,
                    keep=("row_id",))
    return summary.rows / summary.seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--actors", type=int, default=None, help="default: the cluster's CPUs less one")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from maas.raycluster import init_ray

    init_ray("local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        publish_model(f"{tmp}/registry")
        source = work / "rows.parquet"
        write_rows(source, args.rows)
        runs: dict[str, list[float]] = {"plain": [], "ours": []}
        for round_ in range(args.rounds):
            order = ["plain", "ours"] if round_ % 2 == 0 else ["ours", "plain"]
            for name in order:
                out = work / f"{name}-{round_}"
                rate = plain(f"{tmp}/registry", source, out.with_suffix(".parquet")) if name == "plain" \
                    else ours(f"{tmp}/registry", source, out, args.actors)
                runs[name].append(rate)
                print(f"round {round_} {name}: {rate:,.0f} rows/s", flush=True)
    a, b = statistics.median(runs["plain"]), statistics.median(runs["ours"])
    ratios = [o / p for o, p in zip(runs["ours"], runs["plain"], strict=True)]
    print(f"\n{args.rows} rows, {os.cpu_count()} cores, median of {args.rounds} rounds: "
          f"plain {a:,.0f} rows/s, ours {b:,.0f} rows/s, ours/plain {b / a:.2f} "
          f"(per round {min(ratios):.2f}-{max(ratios):.2f})")
    print(f"RESULT rows={args.rows} plain_rows_per_s={a:.0f} ours_rows_per_s={b:.0f} ratio={b / a:.2f}")


if __name__ == "__main__":
    main()
