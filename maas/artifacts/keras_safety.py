"""Check a ``.keras`` archive before Keras sees it, so that loading cannot run code from it.

tf_keras 2.21's safe mode is not a boundary: a ``config.json`` entry ``{"class_name":
"function", "module": "<any importable module>", ...}`` (as a Lambda layer's ``function``, or
anywhere Keras deserialises an object) makes ``load_model(..., safe_mode=True)`` import that
module and call what it names. So every object the config names must be on an allow-list of
Keras built-ins that our builders (``maas/models.py``) use, and nothing may name a function, a
custom or registered object, or a module outside Keras. HDF5 (``.h5``) models, which ignore safe
mode altogether, are refused outright. The weights (``model.weights.h5``) are arrays read by
h5py and carry no code.

The one exception to "no registered object": our own preprocessing layers (``OWN_LAYERS``, from
``maas/preprocessing.py``: take columns, parse numbers, fill NaN), each by its exact class name,
module and ``maas>`` registered name. Their code is this package's, never the file's; their
config holds only numbers. A lookup layer's vocabulary must be written in the config (a list):
a string there is a path Keras would read from the serving machine's disk.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

from maas.errors import IntegrityError
from maas.preprocessing import LAYER_NAMES, MODULE, PACKAGE

ALLOWED: dict[str, frozenset[str]] = {
    "keras.layers": frozenset({
        "InputLayer", "Dense", "Dropout", "Flatten", "Normalization", "Reshape", "Conv1D",
        "Conv2D", "MaxPooling2D", "GlobalMaxPooling1D", "Embedding", "LSTM", "Bidirectional",
        "TextVectorization", "Rescaling", "StringLookup", "Concatenate"}),
    "keras.initializers": frozenset({
        "GlorotUniform", "GlorotNormal", "HeUniform", "HeNormal", "Orthogonal", "RandomUniform",
        "RandomNormal", "TruncatedNormal", "Zeros", "Ones", "Constant"}),
    "keras.optimizers": frozenset({"Adam", "AdamW", "SGD", "RMSprop"}),
    "keras.regularizers": frozenset({"L1", "L2", "L1L2"}),
    "keras.constraints": frozenset({"MaxNorm", "NonNeg", "UnitNorm", "MinMaxNorm"}),
    "tf_keras.src.engine.functional": frozenset({"Functional"}),
    "tf_keras.src.engine.sequential": frozenset({"Sequential"}),
}
ACTIVATIONS = frozenset({"relu", "gelu", "tanh", "elu", "selu", "swish", "silu", "sigmoid", "softmax",
                         "linear", "hard_sigmoid", "softplus", "softsign", "exponential"})
ACTIVATION_KEYS = ("activation", "recurrent_activation")
OWN_LAYERS = frozenset((MODULE, name, f"{PACKAGE}>{name}") for name in LAYER_NAMES)
LOOKUP_LAYERS = frozenset({"StringLookup", "TextVectorization"})
LOOKUP_FILE_KEYS = ("vocabulary", "idf_weights")  # a string here is a file Keras reads on load
ARCHIVE_FILES = ("config.json", "metadata.json", "model.weights.h5")
KERAS_FORMAT = ".keras"


def check_keras_archive(content: bytes, what: str) -> None:
    """Raise ``IntegrityError`` unless ``content`` is a ``.keras`` zip whose config names only
    allowed built-ins. ``what`` names the model version in the message."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            names = archive.namelist()
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise IntegrityError(f"{what}: not a Keras v3 (.keras) archive with a config.json ({exc})") from None
    strays = [n for n in names if n not in ARCHIVE_FILES and not n.startswith("assets/")]
    if strays:
        raise IntegrityError(f"{what}: the archive holds files a model does not need: {strays[:5]}")
    problems = list(_problems(config, "config"))
    if problems:
        raise IntegrityError(f"{what} was refused before loading: its config names objects that could "
                             f"run code ({'; '.join(problems[:5])}); only Keras built-in layers are "
                             "loaded")


def check_format(filename: str, what: str) -> None:
    if not filename.endswith(KERAS_FORMAT) or "/" in filename or "\\" in filename:
        raise IntegrityError(f"{what}: model file '{filename}' is refused; only a Keras v3 '.keras' "
                             "file at the top of the version is loaded (HDF5 ignores safe mode)")


def _problems(node: Any, path: str):
    """Every reason the config tree under ``node`` is not safe to deserialise."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from _problems(item, f"{path}[{i}]")
        return
    if not isinstance(node, dict):
        return
    if "class_name" in node:
        yield from _object_problems(node, path)
    if "function_type" in node or "module" in node and "class_name" not in node:
        yield f"{path}: a function reference"
    for key in ACTIVATION_KEYS:
        value = node.get(key)
        if isinstance(value, str) and value not in ACTIVATIONS:
            yield f"{path}.{key}: activation {value!r} is not a built-in"
    for key, value in node.items():
        yield from _problems(value, f"{path}.{key}")


def _object_problems(node: dict[str, Any], path: str):
    module, name = node.get("module"), node.get("class_name")
    where = f"{path} ({module}.{name})"
    registered = node.get("registered_name")
    if (module, name, registered) in OWN_LAYERS:
        return
    if name not in ALLOWED.get(str(module), frozenset()):
        yield f"{where}: not an allowed Keras built-in"
    if registered not in (None, name):
        yield f"{where}: a registered custom object {registered!r}"
    config = node.get("config")
    if name in LOOKUP_LAYERS and isinstance(config, dict):
        for key in LOOKUP_FILE_KEYS:
            if config.get(key) is not None and not isinstance(config[key], list):
                yield f"{where}: its {key} names a file ({config[key]!r}) instead of listing its values"
