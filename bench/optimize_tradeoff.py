"""Optimise-and-export trade-off, every variant side by side in one run: for the digits MLP, the
digits CNN and a wide MLP (784-512-512-10 on generated data), each trained here in one process
(Keras fit, no Ray) and registered in a temporary registry, then optimised with one recipe (ONNX
fp32, int8 dynamic, int8 static, SavedModel) by the same code as ``python -m optimize``: test
accuracy, top-1 agreement with the Keras parent, size, single-call latency at batch 1 and 64.

    flock /tmp/maas-ray.lock .venv/bin/python bench/optimize_tradeoff.py [--repeats 200] [--threads 1]
        [--epochs 15] [--serve-seconds 10] [--rounds 2] [--default-proxy]

Then served throughput, bench/serve_load.py's method (`serve run` of configs/serve/digits.yaml on a
Ray of its own with Serve's HAProxy ingress as `make demo` starts it, unless --default-proxy; one
Ingress replica hosting the model; `wrk -t2 -c32`): the digits MLP's Keras
version against its ONNX and int8 versions, each pinned with `versions: {specific: [N]}`, single-row
and 64-row requests, rounds in alternating order. `--serve-seconds 0` skips it (no Ray, no wrk).

Last line: RESULT onnx_b1_speedup=.. onnx_b64_speedup=.. int8_acc_drop=.. int8_size_ratio=..
[onnx_rps_ratio=.. onnx_rows_ratio=.. int8_rps_ratio=.. int8_rows_ratio=..]
(speedups: Keras tf.function call time / ONNX Runtime call time, the smallest over the models;
int8: the dynamic variant, the largest accuracy drop in points and the largest size ratio; served
ratios: ONNX (int8) replica / TensorFlow replica, single-row requests/s and 64-row rows/s).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from maas.config import DataConfig, ModelConfig, OptimizerConfig, TrainJobConfig, config_to_dict  # noqa: E402
from maas.data import load_dataset  # noqa: E402
from maas.models import build_model, compile_model  # noqa: E402
from maas.optimize.evaluate import limit_tensorflow_threads  # noqa: E402
from maas.optimize.pipeline import Outcome, format_table, run_recipe  # noqa: E402
from maas.optimize.recipe import RecipeConfig  # noqa: E402
from maas.registry import Registry  # noqa: E402
from maas.tfkeras import save_model  # noqa: E402


def wide_data(path: Path, rows: int = 6000, features: int = 784, classes: int = 10) -> None:
    """Generated 784-feature rows around 10 random centres: a wide model with something to learn."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 0.12, (classes, features))  # overlapping classes: accuracy below 100%
    y = rng.integers(classes, size=rows)
    x = centres[y] + rng.normal(0, 1, (rows, features))
    np.savez(path, x=x.astype(np.float32), y=y)


def jobs(work: Path) -> dict[str, TrainJobConfig]:
    wide_data(work / "wide.npz")
    adam = OptimizerConfig(learning_rate=0.002)
    return {
        "digits_mlp": TrainJobConfig(data=DataConfig(source="digits"),
                                     model=ModelConfig(hidden_units=[128, 64]), optimizer=adam),
        "digits_cnn": TrainJobConfig(data=DataConfig(source="digits"),
                                     model=ModelConfig(type="cnn", conv_filters=[16, 32], hidden_units=[64]),
                                     optimizer=adam),
        "wide_mlp": TrainJobConfig(data=DataConfig(source="npz", path=str(work / "wide.npz")),
                                   model=ModelConfig(hidden_units=[512, 512]), optimizer=adam),
    }


def train_and_register(root: str, name: str, cfg: TrainJobConfig, epochs: int) -> None:
    splits = load_dataset(cfg.data)
    model = build_model(cfg.model, splits.schema, splits.x_train.mean(axis=0), splits.x_train.var(axis=0) + 1)
    compile_model(model, cfg.optimizer)
    model.fit(splits.x_train, splits.y_train, epochs=epochs, batch_size=64, verbose=0)
    with tempfile.TemporaryDirectory() as staged:
        save_model(model, str(Path(staged, "model.keras")))
        Registry(root).publish(name, staged, {
            "schema": splits.schema.to_dict(), "config": config_to_dict(cfg), "format": "model.keras",
            "lineage": {"data_fingerprint": splits.fingerprint}, "metrics": {}})


def recipe(repeats: int, threads: int) -> RecipeConfig:
    return RecipeConfig.model_validate({
        "variants": [{"kind": "onnx"}, {"kind": "onnx-int8", "name": "int8-dynamic"},
                     {"kind": "onnx-int8", "name": "int8-static", "mode": "static"},
                     {"kind": "savedmodel"}],
        "evaluation": {"batch_sizes": [1, 64], "repeats": repeats, "warmup": 10, "threads": threads}})


def summary(outcomes: dict[str, Outcome]) -> dict[str, float]:
    b1, b64, drops, sizes = [], [], [], []
    for outcome in outcomes.values():
        rows = {row.variant: row.figures for row in outcome.rows}
        keras, onnx, int8 = outcome.rows[0].figures, rows["onnx"], rows["int8-dynamic"]
        b1.append(keras["latency_ms_batch1"] / onnx["latency_ms_batch1"])
        b64.append(keras["latency_ms_batch64"] / onnx["latency_ms_batch64"])
        drops.append(100 * (keras["test_accuracy"] - int8["test_accuracy"]))
        sizes.append(int8["size_bytes"] / onnx["size_bytes"])
    return {"onnx_b1_speedup": min(b1), "onnx_b64_speedup": min(b64), "int8_acc_drop": max(drops),
            "int8_size_ratio": max(sizes)}


def pinned(version: int):
    """configs/serve/digits.yaml serving only ``version`` of digits_mlp, on exactly one replica."""

    def edit(config: dict) -> dict:
        ingress = next(d for d in config["applications"][0]["deployments"] if d["name"] == "Ingress")
        ingress.pop("autoscaling_config", None)
        ingress["num_replicas"] = 1
        ingress["user_config"]["models"]["digits_mlp"]["versions"] = {"specific": [version]}
        return config

    return edit


def serve_throughput(root: str, versions: dict[str, int], seconds: int, rounds: int, work: Path,
                     haproxy: bool) -> dict[str, dict[str, dict[str, float]]]:
    """Requests/s per pinned version, bench/serve_load.py's method (rounds in alternating order)."""
    import json

    import serve_load

    one = json.dumps({"instances": [np.random.rand(8, 8).round(3).tolist()]})
    many = json.dumps({"instances": np.random.rand(64, 8, 8).round(3).tolist()})
    runs: dict[str, list] = {name: [] for name in versions}
    names = list(versions)
    for round_number in range(rounds):
        for name in names if round_number % 2 == 0 else names[::-1]:
            start = lambda port, v=versions[name]: serve_load.start_ours(  # noqa: E731
                root, port, work, haproxy=haproxy, niceness=0, edit=pinned(v))
            runs[name].append(serve_load.measure(start, one, many, seconds, work))
            print(f"[serve] {name} (v{versions[name]}) round {round_number + 1}: "
                  f"{runs[name][-1]['one']['rps']:.0f} req/s, "
                  f"{runs[name][-1]['many']['rps'] * 64:.0f} rows/s", flush=True)
    return {name: serve_load._mean(r) for name, r in runs.items()}


def served_summary(served: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    tf = served["keras"]
    print(f"\n{'served version':<16} {'1-row req/s':>12} {'p99 ms':>8} {'64-row rows/s':>14} {'p99 ms':>8} "
          f"{'errors':>7}")
    for name, r in served.items():
        print(f"{name:<16} {r['one']['rps']:>12.0f} {r['one']['p99']:>8.1f} {r['many']['rps'] * 64:>14.0f} "
              f"{r['many']['p99']:>8.1f} {r['one']['errors'] + r['many']['errors']:>7.0f}")
    return {f"{name}_{kind}_ratio": served[name][size]["rps"] / tf[size]["rps"]
            for name in ("onnx", "int8") for kind, size in (("rps", "one"), ("rows", "many"))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per batch size")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads, TF and ONNX Runtime alike")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--serve-seconds", type=int, default=10, help="wrk seconds per load; 0: no serving")
    parser.add_argument("--rounds", type=int, default=2, help="served measurements per version (averaged)")
    parser.add_argument("--default-proxy", action="store_true",
                        help="Serve's Python proxy instead of HAProxy (about 200 req/s on 2 cores)")
    args = parser.parse_args()
    if args.serve_seconds and not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install wrk (or --serve-seconds 0)")
    limit_tensorflow_threads(args.threads)
    outcomes: dict[str, Outcome] = {}
    with tempfile.TemporaryDirectory(prefix="maas-bench-optimize-") as work:
        root = str(Path(work, "registry"))
        for name, cfg in jobs(Path(work)).items():
            started = time.perf_counter()
            train_and_register(root, name, cfg, args.epochs)
            outcomes[name] = run_recipe(Registry(root), name, "1", recipe(args.repeats, args.threads),
                                        log=lambda *a, **k: None)
            print(f"\n== {name} (trained {args.epochs} epochs and optimised in "
                  f"{time.perf_counter() - started:.0f} s; size = ONNX/Keras file bytes)", flush=True)
            print(format_table(outcomes[name]), flush=True)
        result = summary(outcomes)
        if args.serve_seconds:
            published = {row.variant: row.version for row in outcomes["digits_mlp"].rows}
            versions = {"keras": 1, "onnx": published["onnx"], "int8": published["int8-dynamic"]}
            result |= served_summary(serve_throughput(root, versions, args.serve_seconds, args.rounds,
                                                      Path(work), not args.default_proxy))
    print("\nRESULT " + " ".join(f"{k}={v:.2f}" for k, v in result.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
