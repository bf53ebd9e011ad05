"""The stage: a registered version -> each recipe variant built, checked, measured and published
as a new version of the same model (``parent_version``, the recipe entry and the trade-off in its
metadata), and a table of all of them."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maas.artifacts.savedmodel import METADATA_KEY as SAVED_MODEL_KEY
from maas.artifacts.savedmodel import METHOD, SAVED_MODEL_FILE, SIGNATURE, export_checked
from maas.config import default_storage_path
from maas.data import Splits
from maas.errors import MaasError, ModelError
from maas.optimize.evaluate import KerasPredictor, Predictor, limit_tensorflow_threads, measure, top1
from maas.optimize.recipe import (
    OnnxInt8Variant,
    OnnxVariant,
    PrunedVariant,
    RecipeConfig,
    SavedModelVariant,
    TfLiteVariant,
    Variant,
)
from maas.optimize.runtime import OnnxPredictor
from maas.optimize.source import KERAS_FILE, Parent, load_parent, recreate_splits
from maas.registry import ModelVersion, Registry

ONNX_FILE = "model.onnx"
TFLITE_FILE = "model.tflite"


@dataclass
class Built:
    """A variant before publishing: its files, how to run it, and what its checks measured."""

    files: dict[str, bytes]
    artifact: dict[str, Any]  # metadata["artifact"]: format, file, runtime (docs/optimize.md)
    predictor: Predictor
    size_bytes: int
    checks: dict[str, float] = field(default_factory=dict)
    saved_model: dict[str, Any] | None = None  # metadata["saved_model"], when the variant is one


@dataclass
class Row:
    variant: str
    version: int | None
    figures: dict[str, float]
    error: str | None = None


@dataclass
class Outcome:
    parent: ModelVersion
    rows: list[Row]
    refusals: list[MaasError]


def run_recipe(registry: Registry, name: str, version: str | None, recipe: RecipeConfig,
               log: Any = print) -> Outcome:
    """Measure the parent, then build, check, measure and publish each variant in recipe order.
    A refused variant (``MaasError``) is recorded and the others still run; a missing model, a
    parent that fails its checks or data that changed stop everything (raised)."""
    limit_tensorflow_threads(recipe.evaluation.threads)  # before TensorFlow starts, or never
    parent = load_parent(registry, name, version)
    splits = recreate_splits(parent)
    keras = KerasPredictor(parent.model, parent.schema)
    parent_figures = measure(keras, splits, None, len(parent.keras_bytes), recipe.evaluation)
    parent_labels = top1(keras, _test_rows(splits))
    rows = [Row(f"keras (v{parent.version.version})", parent.version.version, parent_figures)]
    refusals: list[MaasError] = []
    for variant in recipe.variants:
        log(f"[optimize] {variant.display_name}: building from {parent.what}", flush=True)
        try:
            published, figures = _build_and_publish(registry, parent, splits, variant, recipe,
                                                    parent_labels, parent_figures)
            rows.append(Row(variant.display_name, published.version, figures))
            log(f"[optimize] {variant.display_name}: registered {name} version {published.version}",
                flush=True)
        except MaasError as exc:  # a refused variant does not stop the others
            refusals.append(exc)
            rows.append(Row(variant.display_name, None, {}, str(exc)))
            log(f"[optimize] {variant.display_name}: refused: {exc}", flush=True)
    return Outcome(parent.version, rows, refusals)


def _build_and_publish(registry: Registry, parent: Parent, splits: Splits, variant: Variant,
                       recipe: RecipeConfig, parent_labels: np.ndarray,
                       parent_figures: dict[str, float]) -> tuple[ModelVersion, dict[str, float]]:
    built = build_variant(variant, parent, splits, recipe.evaluation.threads)
    figures = {**measure(built.predictor, splits, parent_labels, built.size_bytes, recipe.evaluation),
               **built.checks}
    minimum = getattr(variant, "min_agreement", None)
    if minimum is not None and figures["top1_agreement"] < minimum:
        raise ModelError(f"{parent.what}: variant '{variant.display_name}' agrees with the parent on "
                         f"{figures['top1_agreement']:.2%} of the test split, below min_agreement "
                         f"{minimum:.2%}; it is not registered")
    files, metadata = built.files, variant_metadata(parent, variant, recipe, built, figures, parent_figures)
    if built.saved_model is not None:  # savedmodel and pruned kinds: their own export
        metadata[SAVED_MODEL_KEY] = built.saved_model
    else:  # ONNX, int8, TFLite: TF Serving finds the parent's float SavedModel in the version
        saved_files, metadata[SAVED_MODEL_KEY] = parent_saved_model(parent, splits)
        files = {**files, **saved_files}
    return publish_variant(registry, parent, files, metadata, variant.labels), figures


def parent_saved_model(parent: Parent, splits: Splits) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The parent's float SavedModel for a variant that cannot be one (docs/optimize.md, "TensorFlow
    Serving"): a copy of the parent's own files, or (a parent published before every version
    carried one) exported from it once and checked on the validation split. Marked ``of: parent``."""
    if SAVED_MODEL_FILE not in parent.saved_model or parent.saved_model_block is None:
        export = export_checked(parent.model, splits.x_val, parent.what)  # once per run
        parent.saved_model, parent.saved_model_block = export.files, export.block
    block = {**parent.saved_model_block, "of": "parent", "parent_version": parent.version.version}
    return dict(parent.saved_model), block


def build_variant(variant: Variant, parent: Parent, splits: Splits, threads: int = 1) -> Built:
    """Build and check one variant; ``threads``: the ONNX Runtime session's intra-op threads."""
    if isinstance(variant, OnnxVariant):
        return _onnx(variant, parent, splits, threads)
    if isinstance(variant, OnnxInt8Variant):
        return _onnx_int8(variant, parent, splits, threads)
    if isinstance(variant, SavedModelVariant):
        return _savedmodel(variant, parent, splits)
    if isinstance(variant, TfLiteVariant):
        return _tflite(variant, parent, splits, threads)
    if isinstance(variant, PrunedVariant):
        return _pruned(variant, parent, splits)
    raise TypeError(f"no builder for {type(variant).__name__}")  # the schema admits no other


def _onnx(variant: OnnxVariant, parent: Parent, splits: Splits, threads: int) -> Built:
    from maas.optimize.onnx_export import export_onnx
    from maas.optimize.runtime import load_onnx_session

    export = export_onnx(parent.model, parent.schema, splits.x_val, variant.opset, variant.tolerance,
                         parent.what)
    predictor = load_onnx_session(export.content, threads, parent.what)
    return Built({ONNX_FILE: export.content}, _onnx_artifact(predictor, variant.opset, None), predictor,
                 len(export.content), {"max_abs_diff": export.max_abs_diff})


def _onnx_int8(variant: OnnxInt8Variant, parent: Parent, splits: Splits, threads: int) -> Built:
    from maas.optimize.onnx_export import INPUT_NAME, convert, refuse_text_models
    from maas.optimize.quantize import quantize
    from maas.optimize.runtime import load_onnx_session

    refuse_text_models(parent.model, parent.schema, parent.what)
    fp32 = convert(parent.model, parent.schema, variant.opset)
    calibration = np.asarray(splits.x_train[:variant.calibration_rows], np.float32)
    content = quantize(fp32, variant.mode, calibration, INPUT_NAME)
    predictor = load_onnx_session(content, threads, parent.what)
    return Built({ONNX_FILE: content}, _onnx_artifact(predictor, variant.opset, f"int8-{variant.mode}"),
                 predictor, len(content))


def _onnx_artifact(predictor: OnnxPredictor, opset: int, quantization: str | None) -> dict[str, Any]:
    return {"format": "onnx", "file": ONNX_FILE, "runtime": "onnxruntime", "input": predictor.input_name,
            "output": predictor.output_name, "opset": opset, "quantization": quantization}


def _savedmodel(variant: SavedModelVariant, parent: Parent, splits: Splits) -> Built:
    """Every version carries a SavedModel since publishing writes one; this kind re-exports the
    parent and checks the signature against Keras on the whole validation split with the recipe's
    tolerance (and gives versions published before that a SavedModel of their own)."""
    export = export_checked(parent.model, splits.x_val, parent.what, variant.tolerance)
    size = sum(len(content) for content in export.files.values())
    artifact = {"format": "savedmodel", "file": KERAS_FILE, "runtime": "tensorflow",
                "saved_model_dir": ".", "signature": SIGNATURE, "method": METHOD,
                "input": export.predictor.input_name, "output": export.predictor.output_name}
    return Built({**export.files, KERAS_FILE: parent.keras_bytes}, artifact, export.predictor, size,
                 {"max_abs_diff": export.max_abs_diff}, saved_model=export.block)


def _tflite(variant: TfLiteVariant, parent: Parent, splits: Splits, threads: int) -> Built:
    from maas.optimize.onnx_export import refuse_text_models
    from maas.optimize.tflite import convert_tflite, load_tflite

    refuse_text_models(parent.model, parent.schema, parent.what, "TFLite")
    calibration = np.asarray(splits.x_train[:variant.calibration_rows], np.float32)
    content = convert_tflite(parent.model, variant.mode, calibration)
    artifact = {"format": "tflite", "file": TFLITE_FILE, "runtime": "tflite", "served": False,
                "quantization": variant.mode}
    return Built({TFLITE_FILE: content}, artifact, load_tflite(content, threads), len(content))


def _pruned(variant: PrunedVariant, parent: Parent, splits: Splits) -> Built:
    """Pruned while fine-tuned, stripped, then published like a trained version: a Keras file with
    its own checked SavedModel (the zeros are the variant, so the parent's would be wrong)."""
    from maas.optimize.prune import PruneJob, compressed_size, keras_bytes_of, prune_and_finetune
    from maas.optimize.prune_train import prune_on_ray

    config = parent.version.metadata.get("config") or {}
    training, optimizer = config.get("training") or {}, config.get("optimizer") or {}
    job = PruneJob(parent.keras_bytes, KERAS_FILE, parent.what, variant.target_sparsity, variant.epochs,
                   variant.batch_size or int(training.get("batch_size", 64)),
                   variant.learning_rate or float(optimizer.get("learning_rate", 1e-3)) / 10, variant.seed,
                   variant.workers, variant.cpus_per_worker, variant.max_failures)
    x_train = splits.x_train if splits.schema.string_input else np.asarray(splits.x_train, np.float32)
    y_train = np.asarray(splits.y_train)
    if variant.workers:  # a Ray Train run, stored where the parent's training runs were
        storage = (config.get("run") or {}).get("storage_path") or default_storage_path()
        pruned = prune_on_ray(job, x_train, y_train, storage)
    else:
        pruned = prune_and_finetune(job, x_train, y_train)
    content = keras_bytes_of(pruned.model)
    export = export_checked(pruned.model, splits.x_val, f"{parent.what} (pruned)")
    artifact = {"format": "keras", "file": KERAS_FILE, "runtime": "tensorflow",
                "pruned_layers": pruned.pruned_layers}
    checks = {"sparsity": pruned.sparsity, "compressed_size_bytes": float(compressed_size(content)),
              "parent_compressed_size_bytes": float(compressed_size(parent.keras_bytes))}
    return Built({KERAS_FILE: content, **export.files}, artifact, KerasPredictor(pruned.model, parent.schema),
                 len(content), checks, saved_model=export.block)


def variant_metadata(parent: Parent, variant: Variant, recipe: RecipeConfig, built: Built,
                     figures: dict[str, float], parent_figures: dict[str, float]) -> dict[str, Any]:
    """What the new version records: everything serving and the next optimise run need."""
    meta = parent.version.metadata
    return {
        "parent_version": parent.version.version,
        # serving's key for the file to load: the Keras file for a SavedModel variant (served by
        # TensorFlow as before), model.onnx otherwise (for the ONNX Runtime path)
        "format": built.artifact["file"],
        "artifact": built.artifact,
        "schema": meta["schema"],
        "config": meta.get("config"),
        "metrics": figures,
        "optimization": {
            "variant": variant.model_dump(mode="json"),
            "evaluation": recipe.evaluation.model_dump(mode="json"),
            "parent_metrics": parent_figures,
            "tradeoff": tradeoff(figures, parent_figures),
        },
        "lineage": {**(meta.get("lineage") or {}),
                    "parent": {"name": parent.version.name, "version": parent.version.version,
                               "content_hash": parent.version.content_hash}},
        "framework": _framework(),
    }


def tradeoff(figures: dict[str, float], parent: dict[str, float]) -> dict[str, float]:
    """Variant against parent: accuracy points lost, size and latency ratios (< 1 is smaller/faster)."""
    result = {"accuracy_drop_points": 100 * (parent["test_accuracy"] - figures["test_accuracy"]),
              "size_ratio": figures["size_bytes"] / max(parent["size_bytes"], 1)}
    for key in parent:
        if key.startswith("latency_ms_") and key in figures:
            result[key.replace("latency_ms_", "latency_ratio_")] = figures[key] / max(parent[key], 1e-9)
    return result


def _framework() -> dict[str, str]:
    import onnx
    import onnxruntime
    import tf2onnx

    from maas.tfkeras import keras, tensorflow

    return {"tensorflow": tensorflow().__version__, "keras": keras().__version__,
            "tf2onnx": tf2onnx.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def publish_variant(registry: Registry, parent: Parent, files: dict[str, bytes], metadata: dict[str, Any],
                    labels: list[str]) -> ModelVersion:
    with tempfile.TemporaryDirectory(prefix="maas-variant-") as staged:
        for rel, content in files.items():
            Path(staged, rel).parent.mkdir(parents=True, exist_ok=True)
            Path(staged, rel).write_bytes(content)
        published = registry.publish(parent.version.name, staged, metadata)
    return registry.set_labels(published.name, published.version, labels) if labels else published


def _test_rows(splits: Splits) -> np.ndarray:
    return splits.x_test if splits.schema.string_input else np.asarray(splits.x_test, np.float32)


COLUMNS = ("variant", "version", "test_accuracy", "top1_agreement", "size_bytes", "max_abs_diff")


def format_table(outcome: Outcome) -> str:
    """A plain-text table: one row per variant (and the parent first)."""
    latency = sorted({k for row in outcome.rows for k in row.figures if k.startswith("latency_ms_")},
                     key=lambda k: int(k.rsplit("batch", 1)[-1]))
    header = [*COLUMNS, *(k.replace("latency_ms_batch", "ms@") for k in latency)]
    lines = [header]
    for row in outcome.rows:
        if row.error:
            lines.append([row.variant, "-", "refused", *[""] * (len(header) - 3)])
            continue
        f = row.figures
        lines.append([row.variant, str(row.version), f"{f['test_accuracy']:.4f}",
                      f"{f['top1_agreement']:.4f}", f"{f['size_bytes']:,}",
                      f"{f['max_abs_diff']:.1e}" if "max_abs_diff" in f else "-",
                      *(f"{f[k]:.3f}" for k in latency)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in lines)
