"""Small files in each Keras data set loader's own cache layout, for offline tests of
``maas.keras_datasets``: random images with every class present, in the real downloads' formats
(MNIST's npz, Fashion-MNIST's gzipped IDX files, CIFAR-10's pickled python batches, IMDB's npz
of word ranks and its word index).

    python tests/keras_dataset_fixtures.py DIR [mnist fashion_mnist cifar10 imdb]   # then KERAS_HOME=DIR
"""

from __future__ import annotations

import gzip
import pickle
import sys
from pathlib import Path

import numpy as np

CIFAR10_DIR = "cifar-10-batches-py"


def write_fixture(source: str, root: Path, rows: int = 120, seed: int = 0) -> None:
    """Small files in each loader's own cache layout under ``root/datasets`` (for offline tests):
    random images, every class present, the same formats as the real downloads."""
    rng = np.random.default_rng(seed)
    datasets = root / "datasets"
    if source in ("mnist", "fashion_mnist"):
        x = rng.integers(0, 256, (rows, 28, 28), dtype=np.uint8)
        y = (np.arange(rows) % 10).astype(np.uint8)
        half = rows * 2 // 3
        if source == "mnist":
            datasets.mkdir(parents=True, exist_ok=True)
            np.savez(datasets / "mnist.npz", x_train=x[:half], y_train=y[:half],
                     x_test=x[half:], y_test=y[half:])
            return
        (datasets / "fashion-mnist").mkdir(parents=True, exist_ok=True)
        for name, data, header in (("train-labels-idx1-ubyte.gz", y[:half], 8),
                                   ("train-images-idx3-ubyte.gz", x[:half], 16),
                                   ("t10k-labels-idx1-ubyte.gz", y[half:], 8),
                                   ("t10k-images-idx3-ubyte.gz", x[half:], 16)):
            (datasets / "fashion-mnist" / name).write_bytes(gzip.compress(bytes(header) + data.tobytes()))
        return
    if source == "imdb":
        _write_imdb(datasets, rows, rng)
        return
    directory = datasets / CIFAR10_DIR
    directory.mkdir(parents=True, exist_ok=True)
    per_batch = max(10, rows // 6)
    for i, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in (np.arange(per_batch) + i) % 10]
        (directory / name).write_bytes(pickle.dumps({b"batch_label": b"fixture", b"labels": labels,
                                                     b"data": data}, protocol=2))



IMDB_WORDS = ["the", "movie", "was", "and", "a", "plot", "great", "wonderful", "superb", "awful",
              "boring", "terrible", "actors", "film", "i"]


def _write_imdb(datasets: Path, rows: int, rng: np.random.Generator) -> None:
    """imdb.npz as Keras ships it (object arrays of word-rank lists, 1 = most frequent word) and
    imdb_word_index.json (word -> rank); a review's label follows its adjective."""
    import json

    ranks = {word: rank for rank, word in enumerate(IMDB_WORDS, start=1)}
    reviews, labels = [], []
    for i in range(rows):
        positive = i % 2
        adjectives = ["great", "wonderful", "superb"] if positive else ["awful", "boring", "terrible"]
        adjective = rng.choice(adjectives)
        words = ["i", "the", "movie", "was", str(adjective), "and", "the", "plot", "was", str(adjective)]
        reviews.append([ranks[w] for w in words])
        labels.append(positive)
    x = np.empty(rows, dtype=object)
    x[:] = reviews
    y = np.array(labels, dtype=np.int64)
    half = rows * 2 // 3
    datasets.mkdir(parents=True, exist_ok=True)
    np.savez(datasets / "imdb.npz", x_train=x[:half], y_train=y[:half], x_test=x[half:], y_test=y[half:])
    (datasets / "imdb_word_index.json").write_text(json.dumps(ranks))


if __name__ == "__main__":
    for name in sys.argv[2:] or ["mnist", "fashion_mnist", "cifar10", "imdb"]:
        write_fixture(name, Path(sys.argv[1]))
