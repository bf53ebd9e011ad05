"""Send one real digits row to the served model; write a ready-to-paste curl line."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import requests
from sklearn.datasets import load_digits


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True, help="http://host:port/v1/models/NAME")
    parser.add_argument("--curl-file", required=True)
    parser.add_argument("--row", type=int, default=-1, help="which digits row (default: the last)")
    parser.add_argument("--accuracy-file", help="write the served model's registered test accuracy here")
    args = parser.parse_args()

    digits = load_digits()
    row, label = digits.images[args.row].astype(int).tolist(), int(digits.target[args.row])
    body = json.dumps({"instances": [row]}, separators=(",", ":"))
    reply = requests.post(f"{args.endpoint}:predict", data=body, timeout=30)
    if reply.status_code != 200:
        print(f"prediction failed: HTTP {reply.status_code} {reply.text}", file=sys.stderr)
        return 1
    probabilities = np.asarray(reply.json()["predictions"][0])
    print(f"POST {args.endpoint}:predict -> HTTP 200: predicted digit {int(probabilities.argmax())} "
          f"(p={probabilities.max():.3f}); true label {label}")
    curl = (f"curl -s -X POST {args.endpoint}:predict -H 'Content-Type: application/json' "
            f"-d '{body}'")
    with open(args.curl_file, "w") as out:
        out.write(curl + "\n")
    if args.accuracy_file:  # here, not in another Python process: the demo's clock is running
        _write_registered_accuracy(args.endpoint.rstrip("/").rsplit("/", 1)[-1], args.accuracy_file)
    return 0


def _write_registered_accuracy(model: str, path: str) -> None:
    from maas.config import default_registry_root
    from maas.registry import Registry

    accuracy = Registry(default_registry_root()).get(model).metadata["metrics"]["test_accuracy"]
    with open(path, "w") as out:
        out.write(f"{accuracy:.4f}\n")


if __name__ == "__main__":
    sys.exit(main())
