"""Keras -> SavedModel in the TensorFlow Serving layout, written into every registered version.

``model.export(dir)`` writes ``saved_model.pb``, ``fingerprint.pb`` and ``variables/`` (and
``assets/`` for a text model's vocabulary) whose ``serving_default`` signature has method
``tensorflow/serving/predict`` and takes the Input layer's name (``inputs``, from ``build_model``)
as its input key. Written at the top of ``<root>/<name>/<version>/`` next to ``model.keras``,
``tensorflow_model_server --model_base_path=<root>/<name>`` finds each version directory as it is.
Our own serving keeps loading ``model.keras`` (or the ONNX file); the SavedModel is for TensorFlow
Serving and anything else that reads SavedModels.

``export_checked`` is what publishing calls: export, load the signature back the way a serving
process would (no Keras, no Python model code), compare it with Keras on rows of the data, and
describe it for the version's metadata (``metadata["saved_model"]``, docs/optimize.md).

It lives here, not in ``maas/optimize``, because training and tuning publish with it too.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maas.errors import ModelError

SIGNATURE = "serving_default"
METHOD = "tensorflow/serving/predict"
TAGS = ("serve",)
SAVED_MODEL_FILE = "saved_model.pb"
METADATA_KEY = "saved_model"  # metadata["saved_model"]: where the SavedModel is and what it takes
DEFAULT_TOLERANCE = 1e-4  # max |signature - Keras| accepted at publish (float32 noise is ~1e-7)
CHECK_ROWS = 1024  # validation rows compared at publish: catch a wrong graph, cheaply


@dataclass
class SavedModelPredictor:
    """The exported ``serving_default`` signature, called like TensorFlow Serving would."""

    signature: Any
    input_name: str
    output_name: str
    keep: Any = None  # the loaded object: the signature's variables live as long as it does

    def predict(self, batch: np.ndarray) -> np.ndarray:
        from maas.tfkeras import tensorflow

        tensor = tensorflow().constant(batch)
        return self.signature(**{self.input_name: tensor})[self.output_name].numpy()

    def describe(self) -> dict[str, Any]:
        """The signature as ``saved_model_cli show`` prints it: names, dtypes, shapes (-1: any)."""
        inputs = self.signature.structured_input_signature[1]
        outputs = self.signature.structured_outputs
        return {"inputs": {name: _spec(spec) for name, spec in sorted(inputs.items())},
                "outputs": {name: _spec(spec) for name, spec in sorted(outputs.items())}}


def _spec(spec: Any) -> dict[str, Any]:
    if spec.shape.rank is None:
        return {"dtype": spec.dtype.name, "shape": None}
    shape = [-1 if d is None else int(d) for d in spec.shape.as_list()]
    return {"dtype": spec.dtype.name, "shape": shape}


def export_savedmodel(model: Any, directory: str | Path) -> None:
    """Write the SavedModel files straight into ``directory`` (the version's top level). tf_keras
    prints every endpoint's captured tensors while it writes: kept out of the job's log."""
    with contextlib.redirect_stdout(io.StringIO()):
        model.export(str(directory))


def load_savedmodel(directory: str | Path) -> SavedModelPredictor:
    """Load the signature the way a serving process would: no Keras, no Python model code."""
    from maas.tfkeras import tensorflow

    loaded = tensorflow().saved_model.load(str(directory))
    signature = loaded.signatures[SIGNATURE]
    (input_name,) = signature.structured_input_signature[1].keys()
    (output_name,) = signature.structured_outputs.keys()
    return SavedModelPredictor(signature, input_name, output_name, keep=loaded)


@dataclass
class Export:
    """A checked export: its files (relative path -> bytes), the metadata block, the predictor."""

    files: dict[str, bytes]
    block: dict[str, Any]
    predictor: SavedModelPredictor
    max_abs_diff: float


def export_checked(model: Any, rows: np.ndarray, what: str,
                   tolerance: float = DEFAULT_TOLERANCE) -> Export:
    """Export ``model``, load its signature back and compare it with Keras on ``rows`` (refused
    with a ``ModelError`` above ``tolerance``); the files and the block for ``metadata["saved_model"]``."""
    x = rows if rows.dtype.kind in "OUS" else np.asarray(rows, np.float32)
    with tempfile.TemporaryDirectory(prefix="maas-savedmodel-") as work:
        export_savedmodel(model, work)
        predictor = load_savedmodel(work)
        files = {p.relative_to(work).as_posix(): p.read_bytes()
                 for p in sorted(Path(work).rglob("*")) if p.is_file()}
    expected = np.concatenate([np.asarray(model(x[i:i + 1024], training=False))
                               for i in range(0, len(x), 1024)]) if len(x) else np.zeros((0,))
    actual = predictor.predict(x) if len(x) else np.zeros((0,))
    diff = float(np.max(np.abs(expected - actual))) if expected.size else 0.0
    if not diff <= tolerance:  # NaN fails too
        raise ModelError(f"{what}: the exported SavedModel's outputs differ from Keras's by up to "
                         f"{diff:.3g} on {len(x)} validation rows, above the tolerance {tolerance:g}; "
                         "it is not registered")
    block = {"dir": ".", "tags": list(TAGS), "signature": SIGNATURE, "method": METHOD,
             "input": predictor.input_name, "output": predictor.output_name, **predictor.describe(),
             "files": sorted(files), "of": "this version", "max_abs_diff": diff}
    return Export(files, block, predictor, diff)


def write_files(files: dict[str, bytes], directory: str | Path) -> None:
    """Put ``files`` (relative path -> bytes) under ``directory``, refusing to overwrite one."""
    for rel, content in files.items():
        target = Path(directory, rel)
        if target.exists():
            raise ModelError(f"'{rel}' is both a model file and a SavedModel file: cannot publish both")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)


def files_of(metadata: dict[str, Any], files: dict[str, bytes]) -> dict[str, bytes]:
    """The SavedModel files of a version (its verified, decrypted ``files``), by its metadata."""
    listed = (metadata.get(METADATA_KEY) or {}).get("files") or []
    return {rel: files[rel] for rel in listed if rel in files}


def write_plain_copy(registry: Any, name: str, version: int | str | None, base_path: str | Path,
                     verifier: Any = None, key: Any = None) -> Path:
    """``<base_path>/<name>/<version>/`` holding one version's SavedModel files in plain text: for
    an encrypted registry, which TensorFlow Serving cannot read in place. The files are checked
    first (``verifier``'s signature if given, the content hash) and decrypted with ``key``
    (``MasterKey``; default ``$MAAS_MASTER_KEY_FILE``). Keep ``base_path`` as private as the key."""
    entry = registry.get(name, version)
    what = f"model '{name}' version {entry.version}"
    files = registry.read_verified(entry, verifier)
    if "encryption" in entry.metadata:
        from maas.artifacts.encryption import MasterKey, decrypt_files

        files = decrypt_files(files, entry.metadata["encryption"], key or MasterKey.from_env(), what)
    saved = files_of(entry.metadata, files)
    if SAVED_MODEL_FILE not in saved:
        raise ModelError(f"{what} carries no SavedModel (published before versions carried one): "
                         "run `python -m optimize` with a `savedmodel` variant to give it one")
    target = Path(base_path, name, str(entry.version))
    if target.exists():
        raise ModelError(f"'{target}' already exists: remove it or choose another base path")
    target.mkdir(parents=True, mode=0o700)
    write_files(saved, target)
    return target
