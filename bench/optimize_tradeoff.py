"""Optimise-and-export trade-off, every variant side by side in one run: for the digits MLP, the
digits CNN and a wide MLP (784-512-512-10 on generated data), each trained here in one process
(Keras fit, no Ray) and registered in a temporary registry, then optimised with one recipe (ONNX
fp32, int8 dynamic, int8 static, SavedModel) by the same code as ``python -m optimize``: test
accuracy, top-1 agreement with the Keras parent, size, single-call latency at batch 1 and 64.

    .venv/bin/python bench/optimize_tradeoff.py [--repeats 200] [--threads 1] [--epochs 15]

Served throughput per runtime (bench/serve_load.py's method against an ONNX Runtime replica) is not
measured here yet: these are single-call figures.

Last line: RESULT onnx_b1_speedup=.. onnx_b64_speedup=.. int8_acc_drop=.. int8_size_ratio=..
(speedups: Keras tf.function call time / ONNX Runtime call time, the smallest over the models;
int8: the dynamic variant, the largest accuracy drop in points and the largest size ratio).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per batch size")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads, TF and ONNX Runtime alike")
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
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
    print("\nRESULT " + " ".join(f"{k}={v:.2f}" for k, v in result.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
