"""Optimise and export: a registered version -> variants (ONNX, int8 ONNX, SavedModel, TFLite), each
checked, measured and published as a new version of the same model with ``parent_version``.

recipe.py      the recipe schema (``configs/optimize/*.yaml``): which variants to build
source.py      the parent version: verified bytes -> Keras model, and its data splits re-created
onnx_export.py Keras -> ONNX (tf2onnx), checked against Keras on the validation split
quantize.py    ONNX -> int8 ONNX (ONNX Runtime dynamic or static quantisation)
savedmodel.py  Keras -> SavedModel in the TensorFlow Serving layout
tflite.py      Keras -> TensorFlow Lite (fp16, dynamic, int8) for edge clients, not served
runtime.py     the ONNX Runtime session serving can call (``load_onnx_session``)
evaluate.py    accuracy, agreement with the parent, size and latency of any predictor
pipeline.py    the stage: build each variant, evaluate, publish, and the table printed at the end
report.py      the trade-off picture (accuracy vs latency, marker area by size)

Nothing here imports TensorFlow or ONNX at import time.
"""
