"""Batch scoring throughput, side by side in one run: N rows of the digits MLP read from Parquet and
written back as Parquet with the prediction and class probabilities, by

  plain: one process, what a careful user writes: pandas reads the file, the model is one traced
         `tf.function` called on chunks of the rows per call ours uses (32,768 here; TensorFlow's own
         threads use every core), pandas writes the result;
  ours:  `python -m maas score` (Ray Data: read_parquet -> map_batches over a pool of model-holding
         actors -> write_parquet) on a local Ray instance, Ray's start-up excluded, its overhead paid:
         timed from the call to the answer, the input check and the actors' start included;
  floor: (with --floor) Ray Data alone on the same rows: read_parquet -> an identity map_batches
         task keeping the id -> write_parquet, no model: what any Ray Data job of this shape costs.

    .venv/bin/python bench/score_throughput.py [--rows 1000000] [--rounds 2] [--actors N]
        [--batch-size N] [--runtime tensorflow|onnxruntime] [--floor]

--runtime onnxruntime scores the model's ONNX variant (built by the optimize stage) on both sides.

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
from maas.scoring import Features, auto_batch_size  # noqa: E402


def write_rows(path: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    flat = (rng.random((rows, 64), dtype=np.float32) * 16).round(0)
    table = pa.table({"row_id": np.arange(rows), **{f"p{i}": flat[:, i] for i in range(64)}})
    pq.write_table(table, path, row_group_size=65536)


def register(root: str, runtime: str) -> int:
    """The digits MLP as the benches serve it (untrained, one hidden layer of 128); for onnxruntime,
    the ONNX variant of a briefly trained [128, 64] one (the optimize stage needs the data it was
    trained on, which the untrained one does not record). The version."""
    if runtime == "tensorflow":
        publish_model(root)
        return 1
    from bench.optimize_tradeoff import jobs, train_and_register
    from maas.optimize.pipeline import run_recipe
    from maas.optimize.recipe import RecipeConfig
    from maas.registry import Registry

    with tempfile.TemporaryDirectory() as work:
        train_and_register(root, "digits_mlp", jobs(Path(work))["digits_mlp"], epochs=1)
    recipe = RecipeConfig.model_validate({"variants": [{"kind": "onnx"}],
                                          "evaluation": {"batch_sizes": [1], "repeats": 5, "threads": 1}})
    return run_recipe(Registry(root), "digits_mlp", None, recipe, log=lambda *a, **k: None).rows[-1].version


def plain(root: str, version: int, source: Path, out: Path, batch: int) -> float:
    import pandas as pd

    from maas.serving.model import LoadedModel

    model = LoadedModel.from_registry(root, "digits_mlp", version)  # the traced call, warmed up
    started = time.perf_counter()
    frame = pd.read_parquet(source)
    x = frame[[f"p{i}" for i in range(64)]].to_numpy(np.float32).reshape(-1, 8, 8)
    probabilities = np.concatenate([model.predict(x[i:i + batch]) for i in range(0, len(x), batch)])
    result = pd.DataFrame({"row_id": frame["row_id"], "prediction": probabilities.argmax(axis=1).astype(str)})
    for c in range(probabilities.shape[1]):
        result[f"probability_{c}"] = probabilities[:, c]
    result.to_parquet(out)
    return len(frame) / (time.perf_counter() - started)


def ours(root: str, version: int, source: Path, out: Path, actors: int | None,
         batch_size: int | None) -> float:
    from maas.scoring import score

    started = time.perf_counter()
    summary = score(root, f"digits_mlp:{version}", str(source), str(out), actors=actors,
                    batch_size=batch_size, keep=("row_id",))
    return summary.rows / (time.perf_counter() - started)


def _keep_id(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"row_id": batch["row_id"]}


def floor(source: Path, out: Path, rows: int) -> float:
    import ray.data

    started = time.perf_counter()
    ray.data.read_parquet(str(source)).map_batches(_keep_id, batch_format="numpy").write_parquet(str(out))
    return rows / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--actors", type=int, default=None, help="default: the cluster's CPUs less one")
    parser.add_argument("--batch-size", type=int, default=None, help="ours; default: maas score's own")
    parser.add_argument("--runtime", choices=("tensorflow", "onnxruntime"), default="tensorflow")
    parser.add_argument("--floor", action="store_true", help="also time Ray Data alone (no model)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from maas.raycluster import init_ray

    init_ray("local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = f"{tmp}/registry"
        version = register(root, args.runtime)
        source = work / "rows.parquet"
        write_rows(source, args.rows)
        batch = args.batch_size or auto_batch_size(Features(tuple(f"p{i}" for i in range(64)), (8, 8)))
        sides = ["plain", "ours"] + (["floor"] if args.floor else [])
        runs: dict[str, list[float]] = {name: [] for name in sides}
        for round_ in range(args.rounds):
            order = sides if round_ % 2 == 0 else sides[::-1]
            for name in order:
                out = work / f"{name}-{round_}"
                if name == "plain":
                    rate = plain(root, version, source, out.with_suffix(".parquet"), batch)
                elif name == "ours":
                    rate = ours(root, version, source, out, args.actors, args.batch_size)
                else:
                    rate = floor(source, out, args.rows)
                runs[name].append(rate)
                print(f"round {round_} {name}: {rate:,.0f} rows/s ({args.rows / rate:.2f} s)", flush=True)
    a, b = statistics.median(runs["plain"]), statistics.median(runs["ours"])
    ratios = [o / p for o, p in zip(runs["ours"], runs["plain"], strict=True)]
    print(f"\n{args.rows} rows, {os.cpu_count()} cores, {args.runtime}, median of {args.rounds} rounds: "
          f"plain {a:,.0f} rows/s, ours {b:,.0f} rows/s, ours/plain {b / a:.2f} "
          f"(per round {min(ratios):.2f}-{max(ratios):.2f})")
    extra = f" batch={batch}"
    if args.floor:
        f = statistics.median(runs["floor"])
        print(f"Ray Data alone (read -> identity -> write, no model): {f:,.0f} rows/s, "
              f"{args.rows / f:.2f} s against the plain loop's whole run of {args.rows / a:.2f} s")
        extra = f" floor_rows_per_s={f:.0f} floor_vs_plain={f / a:.2f}"
    print(f"RESULT rows={args.rows} plain_rows_per_s={a:.0f} ours_rows_per_s={b:.0f} ratio={b / a:.2f}"
          f"{extra}")


if __name__ == "__main__":
    main()
