"""The recipe: which variants of a registered version to build, and how to measure them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from maas.config import load_config
from maas.schema import StrictSchema

DEFAULT_OPSET = 17
DEFAULT_TOLERANCE = 1e-4


class _VariantBase(StrictSchema):
    name: str | None = Field(
        None, pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$",
        description="Name of the variant in metadata and the table (default: its kind).")
    labels: list[str] = Field(default_factory=list,
                              description="Labels put on the published version (moved from others).")

    @property
    def display_name(self) -> str:
        return self.name or self.kind  # type: ignore[attr-defined]


class OnnxVariant(_VariantBase):
    kind: Literal["onnx"] = Field(description="fp32 ONNX model (tf2onnx), run by ONNX Runtime.")
    opset: int = Field(DEFAULT_OPSET, ge=13, le=21, description="ONNX opset to convert to.")
    tolerance: float = Field(
        DEFAULT_TOLERANCE, gt=0, le=1e-2,
        description="Largest |ONNX - Keras| output difference on the validation split that may be "
                    "published; above it the variant is refused.")


class OnnxInt8Variant(_VariantBase):
    kind: Literal["onnx-int8"] = Field(description="int8-weight ONNX model (ONNX Runtime quantisation).")
    mode: Literal["dynamic", "static"] = Field(
        "dynamic", description="dynamic: int8 weights, activations quantised per call; static: "
                               "activations too, calibrated on training rows.")
    calibration_rows: int = Field(256, ge=1, description="static: training rows to calibrate on.")
    opset: int = Field(DEFAULT_OPSET, ge=13, le=21, description="ONNX opset of the fp32 model.")
    min_agreement: float = Field(
        0.95, ge=0, le=1,
        description="Smallest top-1 agreement with the parent on the test split that may be published.")


class SavedModelVariant(_VariantBase):
    kind: Literal["savedmodel"] = Field(
        description="SavedModel in the TensorFlow Serving layout (saved_model.pb + variables/ at the "
                    "top of the version, next to model.keras).")
    tolerance: float = Field(DEFAULT_TOLERANCE, gt=0, le=1e-2,
                             description="Largest |SavedModel - Keras| output difference allowed.")


class TfLiteVariant(_VariantBase):
    kind: Literal["tflite"] = Field(
        description="TensorFlow Lite model for edge clients: registered and downloadable, not served.")
    mode: Literal["fp16", "dynamic", "int8"] = Field(
        "fp16", description="fp16: float16 weights; dynamic: int8 weights; int8: int8 weights and "
                            "activations, calibrated on training rows (float32 input and output).")
    calibration_rows: int = Field(256, ge=1, description="int8: training rows to calibrate on.")
    min_agreement: float = Field(
        0.95, ge=0, le=1,
        description="Smallest top-1 agreement with the parent on the test split that may be published.")


class PrunedVariant(_VariantBase):
    kind: Literal["pruned"] = Field(
        description="Magnitude pruning of the Dense/convolution kernels while fine-tuning on the "
                    "parent's training split (tensorflow-model-optimization), stripped: a plain "
                    "Keras version, served and exportable like its parent.")
    target_sparsity: float = Field(0.5, gt=0, lt=1, description="Share of each pruned kernel set to zero.")
    epochs: int = Field(2, ge=1, le=100, description="Fine-tuning epochs.")
    batch_size: int | None = Field(None, ge=1, description="Default: the parent's training batch size.")
    learning_rate: float | None = Field(
        None, gt=0, description="Default: a tenth of the parent's learning rate (Adam).")
    seed: int = Field(0, description="TensorFlow seed for the fine-tuning.")
    workers: int = Field(
        1, ge=0, le=256,
        description="Ray Train workers for the fine-tuning, as a training run has them (data-parallel, "
                    "MultiWorkerMirroredStrategy above 1, a checkpoint every epoch, restarted from the "
                    "last one after a failure; the cluster is joined like `python -m train` does). 0: "
                    "in the optimise process, without Ray.")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs Ray reserves for each worker.")
    max_failures: int = Field(
        2, ge=0, description="Worker failures the Ray Train run survives, each restarting it from its "
                             "last checkpoint.")
    min_agreement: float = Field(
        0.95, ge=0, le=1,
        description="Smallest top-1 agreement with the parent on the test split that may be published.")


Variant = Annotated[OnnxVariant | OnnxInt8Variant | SavedModelVariant | TfLiteVariant | PrunedVariant,
                    Field(discriminator="kind")]


class EvaluationSection(StrictSchema):
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 64],
                                   description="Batch sizes whose single-call latency is measured.")
    repeats: int = Field(50, ge=1, description="Timed calls per batch size (the median is kept).")
    warmup: int = Field(5, ge=0, description="Untimed calls before timing.")
    threads: int = Field(1, ge=1, description="Intra-op threads of the ONNX Runtime session (and of "
                                               "TensorFlow) while timing.")


class RecipeConfig(StrictSchema):
    variants: list[Variant] = Field(min_length=1, description="The variants to build, in order.")
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection,
                                          description="How every variant and its parent are measured.")

    @model_validator(mode="after")
    def _unique_names(self) -> RecipeConfig:
        names = [v.display_name for v in self.variants]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"variant names must be unique; repeated: {repeated} (give each a name:)")
        return self


def load_recipe(paths: str | Path | Sequence[str | Path], overrides: Iterable[str] = ()) -> RecipeConfig:
    """Read the recipe YAML file(s), apply ``--set`` overrides, validate."""
    return load_config(paths, overrides, schema=RecipeConfig)
