"""fp32 ONNX -> int8 ONNX with ONNX Runtime's quantisation tools (CPU).

dynamic: int8 weights, activations quantised at run time from each call's range: no data needed.
static:  int8 weights and activations, activation ranges calibrated on training rows (QDQ format,
         which ONNX Runtime fuses into integer kernels).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from maas.optimize.onnx_export import compact_names


def quantize(fp32: bytes, mode: str, calibration: np.ndarray | None = None,
             input_name: str = "inputs") -> bytes:
    """The int8 model's bytes. The quantisers work on files, so they go through a private
    temporary directory (the artefact is not secret before publishing: the registry encrypts)."""
    with tempfile.TemporaryDirectory(prefix="maas-quantize-") as work:
        source, target = Path(work, "fp32.onnx"), Path(work, "int8.onnx")
        source.write_bytes(fp32)
        if mode == "dynamic":
            _dynamic(source, target)
        elif mode == "static":
            _static(source, target, calibration, input_name)
        else:
            raise ValueError(f"unknown quantisation mode {mode!r}")
        return compact_names(target.read_bytes())


def _dynamic(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)


def _static(source: Path, target: Path, calibration: np.ndarray | None, input_name: str) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    if calibration is None or not len(calibration):
        raise ValueError("static quantisation needs calibration rows")
    rows = np.asarray(calibration, np.float32)

    class Rows(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{input_name: rows[i:i + 32]} for i in range(0, len(rows), 32)])

        def get_next(self):  # noqa: ANN201 - onnxruntime's interface
            return next(self._batches, None)

    quantize_static(str(source), str(target), Rows(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
