"""The Open Inference Protocol's binary tensor data extension (Triton's ``binary_tensor_data``,
which ``tritonclient`` uses by default): a body is a JSON header of ``Inference-Header-Content-Length``
bytes followed by raw little-endian tensor bytes, in input (or output) order; a tensor sent that
way says how many bytes are its own with ``parameters: {"binary_data_size": N}`` instead of
``data``. ``BYTES`` elements are each a 4-byte little-endian length followed by the bytes.

Who does what, as for JSON tensors (see ``maas.serving``):

* the ingress frames: ``read_v2_body`` splits the body into the JSON header and each input's bytes
  (checking the lengths add up), a ``BinaryV2Request`` that crosses a Serve handle as plain bytes;
* the model's host decodes: ``decode_binary_tensor`` turns one input's bytes into an array of its
  declared shape and datatype, which ``oip.parse_v2_inputs`` checks against the version's schema;
* the ingress answers: ``binary_outputs`` moves the outputs the request asked for as binary out of
  the JSON into the bytes after it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from maas.errors import RequestError

INFERENCE_HEADER = "Inference-Header-Content-Length"
BINARY_MEDIA_TYPE = "application/octet-stream"

# Little-endian on the wire whatever the host's byte order; BYTES is length-prefixed (below).
WIRE_DTYPES = {"FP16": "<f2", "FP32": "<f4", "FP64": "<f8", "INT8": "i1", "INT16": "<i2",
               "INT32": "<i4", "INT64": "<i8", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4",
               "UINT64": "<u8"}


@dataclass(frozen=True)
class BinaryV2Request:
    """A v2 infer request with tensors in binary: its JSON ``header`` and, per entry of
    ``header["inputs"]`` in order, that input's bytes (``None`` where the input has JSON ``data``).
    What the ingress hands the model's host, in its own replica or across a Serve handle."""

    header: dict[str, Any]
    buffers: tuple[bytes | None, ...]


@dataclass(frozen=True)
class BinaryBody:
    """A response body in the extension's framing: the JSON header, then the tensors' bytes."""

    header: bytes
    data: bytes


def read_v2_body(body: bytes, header_length: str | None) -> Any:
    """A v2 infer body as the host takes it: the JSON object, or a ``BinaryV2Request`` when
    ``header_length`` (the ``Inference-Header-Content-Length`` header) says binary tensor data
    follows the JSON."""
    if header_length is None:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            hint = (f"; a body with binary tensor data (binary_data_size) must say how long its JSON "
                    f"header is in the {INFERENCE_HEADER} HTTP header") if b"binary_data_size" in body else ""
            raise RequestError(f"request body is not valid JSON: {exc}{hint}") from None
    size = _header_size(header_length, len(body))
    try:
        header = orjson.loads(memoryview(body)[:size])
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"the first {size} bytes of the body ({INFERENCE_HEADER}) are not valid JSON: "
                           f"{exc}; the body must start with the JSON request, then the binary "
                           f"tensor data") from None
    return split_buffers(header, memoryview(body)[size:])


def _header_size(value: str, body_size: int) -> int:
    if not value.strip().isdigit():
        raise RequestError(f"{INFERENCE_HEADER} must be the JSON header's length in bytes, a whole "
                           f"number, got {value!r}")
    size = int(value)
    if size > body_size:
        raise RequestError(f"{INFERENCE_HEADER} is {size} bytes but the whole body is {body_size} bytes; "
                           f"it must give the length of the JSON header at the start of the body")
    return size


def split_buffers(header: Any, data: bytes | memoryview) -> Any:
    """Each binary input's bytes, cut from ``data`` (all that follows the JSON header) in input
    order; ``header`` alone when no input is binary and nothing follows it."""
    inputs = header.get("inputs") if isinstance(header, dict) else None
    if not isinstance(inputs, list):
        if len(data):
            raise RequestError(f"{len(data)} bytes of binary tensor data follow the JSON header, but it "
                               f"has no 'inputs' list of tensors to say whose they are")
        return header  # parse_v2_inputs says what the header lacks
    sizes = [binary_data_size(tensor) for tensor in inputs]
    declared = sum(size or 0 for size in sizes)
    if declared != len(data):
        named = ", ".join(f"{_name(t)}: {s}" for t, s in zip(inputs, sizes, strict=True) if s is not None)
        raise RequestError(
            f"{len(data)} bytes of binary tensor data follow the JSON header, but the inputs' "
            f"binary_data_size add up to {declared} ({named or 'no input has a binary_data_size'}); "
            f"they must account for every byte after the header")
    if not any(size is not None for size in sizes):
        return header
    buffers: list[bytes | None] = []
    offset = 0
    for tensor, size in zip(inputs, sizes, strict=True):
        if size is None:
            buffers.append(None)
            continue
        if "data" in tensor:
            raise RequestError(f"input {_name(tensor)} has both 'data' and a binary_data_size; send its "
                               f"values one way, as JSON data or as binary data")
        buffers.append(bytes(data[offset:offset + size]))
        offset += size
    return BinaryV2Request(header, tuple(buffers))


def binary_data_size(tensor: Any) -> int | None:
    """A tensor's ``parameters.binary_data_size``, checked; ``None`` when it has none."""
    if not isinstance(tensor, dict) or tensor.get("parameters") is None:
        return None
    parameters = tensor["parameters"]
    if not isinstance(parameters, dict):
        raise RequestError(f"parameters of input {_name(tensor)} must be an object, got {parameters!r}")
    if "binary_data_size" not in parameters:
        return None
    size = parameters["binary_data_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise RequestError(f"binary_data_size of input {_name(tensor)} must be a whole number of bytes, "
                           f"got {size!r}")
    return size


def _name(tensor: Any) -> str:
    return repr(tensor.get("name")) if isinstance(tensor, dict) else "?"


def decode_binary_tensor(name: Any, shape: list[int], datatype: str, raw: bytes) -> np.ndarray | list[str]:
    """One input's bytes as an array of its shape (numeric types) or a flat list of strings
    (``BYTES``); a size that does not fit the shape and datatype is a ``RequestError``."""
    count = int(np.prod(shape))
    if datatype == "BYTES":
        return _decode_strings(name, shape, count, raw)
    dtype = np.dtype(WIRE_DTYPES[datatype])
    needed = count * dtype.itemsize
    if len(raw) != needed:
        raise RequestError(f"binary_data_size of input {name!r} is {len(raw)} bytes, but shape {shape} of "
                           f"{datatype} needs {needed} ({count} values of {dtype.itemsize} bytes)")
    return np.frombuffer(raw, dtype).reshape(shape)


def _decode_strings(name: Any, shape: list[int], count: int, raw: bytes) -> list[str]:
    values: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if len(values) == count:
            raise RequestError(f"binary data of input {name!r} holds more than the {count} BYTES "
                               f"elements shape {shape} needs ({len(raw) - offset} bytes left over)")
        if offset + 4 > len(raw):
            raise RequestError(f"binary data of input {name!r} ends inside the 4-byte length of BYTES "
                               f"element {len(values)}; each element is a 4-byte little-endian length, "
                               f"then that many bytes")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise RequestError(f"BYTES element {len(values)} of input {name!r} says it is {length} bytes "
                               f"but only {len(raw) - offset} are left in its binary_data_size")
        values.append(raw[offset:offset + length])
        offset += length
    if len(values) != count:
        raise RequestError(f"binary data of input {name!r} holds {len(values)} BYTES elements, but shape "
                           f"{shape} needs {count}")
    try:
        return [value.decode() for value in values]
    except UnicodeDecodeError as exc:
        raise RequestError(f"a BYTES element of input {name!r} is not UTF-8 text ({exc.reason}); this "
                           f"model takes strings") from None


def binary_outputs(body: dict[str, Any], names: frozenset[str]) -> BinaryBody:
    """A v2 response (``oip.v2_response``) with the outputs in ``names`` sent as binary: their
    ``data`` leaves the JSON for the bytes after it, and ``binary_data_size`` says how many."""
    outputs, chunks = [], []
    for output in body["outputs"]:
        if output["name"] not in names:
            outputs.append(output)
            continue
        raw = np.ascontiguousarray(output["data"], dtype=WIRE_DTYPES[output["datatype"]]).tobytes()
        rest = {key: value for key, value in output.items() if key != "data"}
        outputs.append({**rest, "parameters": {**output.get("parameters", {}), "binary_data_size": len(raw)}})
        chunks.append(raw)
    header = orjson.dumps({**body, "outputs": outputs}, option=orjson.OPT_SERIALIZE_NUMPY)
    return BinaryBody(header, b"".join(chunks))


def encode_binary_request(header: dict[str, Any],
                          tensors: dict[str, np.ndarray | list[str]]) -> tuple[bytes, int]:
    """Client side, for tests and benches: ``header`` with each named input's values as binary
    data; returns the body and its JSON header's length (the ``Inference-Header-Content-Length``)."""
    inputs, chunks = [], []
    for tensor in header["inputs"]:
        if tensor["name"] not in tensors:
            inputs.append(tensor)
            continue
        values = tensors[tensor["name"]]
        if tensor["datatype"] == "BYTES":
            raw = b"".join(struct.pack("<I", len(v)) + v
                           for v in (s.encode() if isinstance(s, str) else s for s in values))
        else:
            raw = np.ascontiguousarray(values, dtype=WIRE_DTYPES[tensor["datatype"]]).tobytes()
        rest = {key: value for key, value in tensor.items() if key != "data"}
        inputs.append({**rest, "parameters": {**tensor.get("parameters", {}), "binary_data_size": len(raw)}})
        chunks.append(raw)
    json_header = orjson.dumps({**header, "inputs": inputs})
    return json_header + b"".join(chunks), len(json_header)
