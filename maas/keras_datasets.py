"""The seeds' data sets (MNIST, Fashion-MNIST, CIFAR-10, IMDB reviews) through Keras' own downloader and
cache layout: ``$KERAS_HOME/datasets`` (default ``~/.keras/datasets``), exactly where
``tf_keras.datasets.*.load_data`` keeps them, so a file Keras already fetched is reused.

Differences from ``load_data``, and why:

* A file already in the cache is read as it is; only a missing one is downloaded (by Keras'
  ``get_file``, with Keras' published sha256 where Keras has one). ``load_data`` re-downloads a
  present file whose hash differs, which would make offline use and small test fixtures in the
  cache layout impossible.
* Nothing is unpickled freely: MNIST's npz is read with ``allow_pickle=False``; CIFAR's pickled
  batches and IMDB's object arrays go through an unpickler that admits only the dicts, bytes,
  lists and numpy arrays the real files hold (``load_data`` calls ``pickle.load`` on whatever file
  sits in the cache).
* IMDB reviews come back as text (word ids decoded with Keras' word index; labels ``negative`` /
  ``positive``), because our text models tokenise inside the model: serving then takes raw strings.
* The official train/test split is not kept: rows of both are pooled and split by ``data.*_fraction``
  and ``data.seed`` like every other source (stratified), so splits behave the same everywhere.

Every Ray worker loads its data itself (``maas.training.setup_worker``), so every node reads its
own cache: each node downloads once on first use (11 MB MNIST, 30 MB Fashion-MNIST, 163 MB
CIFAR-10). Nodes without internet need the file placed at the path the error names, or
``KERAS_HOME`` pointing at shared storage that holds it.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maas.errors import DataError

KERAS_DATASETS = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"


@dataclass(frozen=True)
class RemoteFile:
    name: str              # path under <cache>/datasets/
    origin: str
    sha256: str | None     # Keras' published hash, checked on download
    untar: bool = False


MNIST = RemoteFile("mnist.npz", KERAS_DATASETS + "mnist.npz",
                   "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1")
FASHION = [RemoteFile(f"fashion-mnist/{name}", KERAS_DATASETS + name, None)
           for name in ("train-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz",
                        "t10k-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz")]
CIFAR10 = RemoteFile("cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                     "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce", untar=True)
IMDB = RemoteFile("imdb.npz", KERAS_DATASETS + "imdb.npz",
                  "69664113be75683a8fe16e3ed0ab59fda8886cb3cd7ada244f7d9544e4676b9f")
IMDB_WORDS = RemoteFile("imdb_word_index.json", KERAS_DATASETS + "imdb_word_index.json",
                        "bfafd718b763782e994055a2d397834f")
SOURCES = ("mnist", "fashion_mnist", "cifar10", "imdb")


def cache_dir() -> Path:
    """Keras' cache root: ``$KERAS_HOME``, else ``~/.keras``."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")


def fetch(remote: RemoteFile) -> Path:
    """The cached file (or directory, for a tarball), downloaded by Keras' ``get_file`` if missing."""
    path = cache_dir() / "datasets" / remote.name
    if path.exists():
        return path
    from maas.tfkeras import keras

    subdir, _, fname = f"datasets/{remote.name}".rpartition("/")
    try:
        fetched = keras().utils.get_file(fname, origin=remote.origin, file_hash=remote.sha256,
                                         cache_dir=str(cache_dir()), cache_subdir=subdir,
                                         untar=remote.untar)
    except Exception as exc:  # get_file raises a bare Exception for network failures
        raise DataError(f"could not download {remote.origin} ({exc}). Offline, place the file at "
                        f"{path} (set KERAS_HOME to use another cache root)") from None
    return Path(fetched)


def load(source: str) -> tuple[np.ndarray, np.ndarray]:
    """All rows (train and test pooled): float32 images and integer labels, or (IMDB) review
    texts and ``negative``/``positive`` labels."""
    loaders = {"mnist": _mnist, "fashion_mnist": _fashion_mnist, "cifar10": _cifar10, "imdb": _imdb}
    x, y = loaders[source]()
    if len(x) != len(y) or not len(x):
        raise DataError(f"{source}: {len(x)} rows but {len(y)} labels in {cache_dir() / 'datasets'}")
    if source == "imdb":
        return x, np.where(np.asarray(y).reshape(-1) == 1, "positive", "negative")
    return x.astype(np.float32), y.astype(np.int64).reshape(-1)


def _mnist() -> tuple[np.ndarray, np.ndarray]:
    path = fetch(MNIST)
    try:
        with np.load(path, allow_pickle=False) as f:
            return (np.concatenate([f["x_train"], f["x_test"]]),
                    np.concatenate([f["y_train"], f["y_test"]]))
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path} is not MNIST's npz (x_train, y_train, x_test, y_test): {exc}") from None


def _idx(path: Path, offset: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not a gzipped IDX file: {exc}") from None


def _fashion_mnist() -> tuple[np.ndarray, np.ndarray]:
    labels_train, images_train, labels_test, images_test = (fetch(f) for f in FASHION)
    y_train, y_test = _idx(labels_train, 8), _idx(labels_test, 8)
    x_train = _idx(images_train, 16).reshape(len(y_train), 28, 28)
    x_test = _idx(images_test, 16).reshape(len(y_test), 28, 28)
    return np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test])


class _ArrayUnpickler(pickle.Unpickler):
    """Only what CIFAR batches and IMDB's object arrays hold: numpy arrays, dicts, bytes, lists."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # how a protocol-2 pickle carries bytes; runs no code

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a data set file")


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        data, labels = batch[b"data"], batch[b"labels"]
        images = np.asarray(data, np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return images, np.asarray(labels, np.int64)
    except (OSError, pickle.UnpicklingError, KeyError, ValueError, TypeError, EOFError) as exc:
        raise DataError(f"{path} is not a CIFAR-10 python batch: {exc}") from None


def _cifar10() -> tuple[np.ndarray, np.ndarray]:
    directory = fetch(CIFAR10)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        raise DataError(f"{directory} lacks {', '.join(missing)} (CIFAR-10's python batches)")
    parts = [_cifar_batch(directory / n) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _npz_arrays(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """An npz's arrays, object arrays through the allow-list unpickler (``np.load`` would need
    ``allow_pickle=True``, which runs whatever the file names)."""
    import zipfile

    arrays = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for key in keys:
                with archive.open(f"{key}.npy") as member:
                    raw = io.BytesIO(member.read())
                version = np.lib.format.read_magic(raw)
                shape, fortran, dtype = (np.lib.format.read_array_header_1_0(raw) if version == (1, 0)
                                         else np.lib.format.read_array_header_2_0(raw))
                if dtype.hasobject:
                    arrays[key] = np.asarray(_ArrayUnpickler(raw).load(), dtype=object).reshape(shape)
                else:
                    raw.seek(0)
                    arrays[key] = np.lib.format.read_array(raw, allow_pickle=False)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError, EOFError) as exc:
        raise DataError(f"{path} is not the data set's npz ({', '.join(keys)}): {exc}") from None
    return arrays


def _imdb() -> tuple[np.ndarray, np.ndarray]:
    import json

    arrays = _npz_arrays(fetch(IMDB), ("x_train", "y_train", "x_test", "y_test"))
    words_path = fetch(IMDB_WORDS)
    try:
        words = {int(rank): word for word, rank in json.loads(words_path.read_text()).items()}
    except (OSError, ValueError, AttributeError) as exc:
        raise DataError(f"{words_path} is not IMDB's word index (word -> rank JSON): {exc}") from None
    reviews = np.concatenate([arrays["x_train"], arrays["x_test"]])
    texts = np.array([" ".join(words[w] for w in review if w in words) for review in reviews], dtype=object)
    return texts, np.concatenate([arrays["y_train"], arrays["y_test"]])
