"""Tensors in and out of the Open Inference Protocol: JSON `data` and Triton's binary tensor extension
(a JSON header of `Inference-Header-Content-Length` bytes, then each binary tensor's raw little-endian
bytes in order, each announced by `parameters.binary_data_size`).

Pure functions over bytes and models; every bad input raises ProtocolError naming the tensor.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from trtrefit.serving.protocol import InferenceRequest, InferenceResponse, RequestInput, ResponseOutput

if TYPE_CHECKING:
    import torch

# OIP datatype -> torch dtype name. BYTES (strings) has no tensor form here.
DATATYPES = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "BF16": "bfloat16",
    "FP32": "float32",
    "FP64": "float64",
}
_BY_DTYPE = {dtype: name for name, dtype in DATATYPES.items()}


class ProtocolError(ValueError):
    """A request the protocol (or this model) cannot take: HTTP 400 with its message."""


@dataclass(frozen=True)
class Decoded:
    request: InferenceRequest
    tensors: list[torch.Tensor]


def datatype_name(dtype: str) -> str:
    """`float32` -> `FP32`."""
    if dtype not in _BY_DTYPE:
        raise ProtocolError(f"dtype {dtype} has no Open Inference Protocol datatype")
    return _BY_DTYPE[dtype]


def datatype_of(dtype: torch.dtype) -> str:
    return datatype_name(str(dtype).removeprefix("torch."))


def decode_request(body: bytes, header_length: str | None) -> Decoded:
    """Parse an infer request body: plain JSON, or JSON header + binary tensors."""
    if header_length is None:
        head, rest = body, b""
    else:
        try:
            size = int(header_length)
        except ValueError as exc:
            raise ProtocolError(f"Inference-Header-Content-Length {header_length!r} is not a number") from exc
        if not 0 < size <= len(body):
            raise ProtocolError(
                f"Inference-Header-Content-Length {size} does not fit a body of {len(body)} bytes"
            )
        head, rest = body[:size], body[size:]
    try:
        request = InferenceRequest.model_validate_json(head)
    except ValidationError as exc:
        raise ProtocolError(f"not an inference request: {_first_error(exc)}") from exc
    tensors = []
    offset = 0
    for item in request.inputs:
        tensor, used = _decode_input(item, rest, offset)
        tensors.append(tensor)
        offset += used
    if offset != len(rest):
        raise ProtocolError(f"{len(rest) - offset} bytes of binary data follow the inputs unclaimed")
    return Decoded(request, tensors)


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"]) or "body"
    return f"{where}: {error['msg']}"


def _decode_input(item: RequestInput, binary: bytes, offset: int) -> tuple[torch.Tensor, int]:
    import torch

    if item.datatype not in DATATYPES:
        raise ProtocolError(
            f"input {item.name!r}: datatype {item.datatype} is not supported (one of {', '.join(DATATYPES)})"
        )
    if any(d < 0 for d in item.shape):
        raise ProtocolError(f"input {item.name!r}: shape {item.shape} has a negative dimension")
    dtype = getattr(torch, DATATYPES[item.datatype])
    count = math.prod(item.shape)
    size = item.parameters.get("binary_data_size")
    if size is not None:
        if item.data is not None:
            raise ProtocolError(f"input {item.name!r}: both binary_data_size and data are set")
        want = count * dtype.itemsize
        if not isinstance(size, int) or size != want:
            raise ProtocolError(
                f"input {item.name!r}: binary_data_size {size} but shape {item.shape} {item.datatype} "
                f"needs {want} bytes"
            )
        if offset + size > len(binary):
            raise ProtocolError(f"input {item.name!r}: the body ends before its {size} bytes of binary data")
        chunk = bytearray(binary[offset : offset + size])  # writable: torch warns about read-only buffers
        flat = torch.frombuffer(chunk, dtype=dtype) if size else torch.empty(0, dtype=dtype)
        return flat.reshape(item.shape), size
    if item.data is None:
        raise ProtocolError(f"input {item.name!r}: neither data nor binary_data_size")
    try:
        # bfloat16 has no Python literal form: parse as float32 and convert.
        parse_as = torch.float32 if dtype == torch.bfloat16 else dtype
        flat = torch.tensor(item.data, dtype=parse_as).reshape(-1).to(dtype)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ProtocolError(f"input {item.name!r}: data is not a {item.datatype} array: {exc}") from exc
    if flat.numel() != count:
        raise ProtocolError(
            f"input {item.name!r}: shape {item.shape} needs {count} elements, data has {flat.numel()}"
        )
    return flat.reshape(item.shape), 0


def encode_response(
    model: str,
    request: InferenceRequest,
    names: Sequence[str],
    outputs: Sequence[torch.Tensor],
) -> tuple[bytes, int | None]:
    """(body, JSON header length or None). Binary for outputs that ask for it, or for all of them when
    the request sets `binary_data_output` (tritonclient does when it names no outputs)."""
    by_name = dict(zip(names, outputs, strict=True))
    default_binary = bool(request.parameters.get("binary_data_output", False))
    if request.outputs:
        unknown = [o.name for o in request.outputs if o.name not in by_name]
        if unknown:
            raise ProtocolError(f"unknown output(s) {unknown}; this model has {list(names)}")
        wanted = [(o.name, bool(o.parameters.get("binary_data", default_binary))) for o in request.outputs]
    else:
        wanted = [(name, default_binary) for name in names]
    items: list[ResponseOutput] = []
    chunks: list[bytes] = []
    for name, binary in wanted:
        tensor = by_name[name].detach().cpu().contiguous()
        common: dict[str, Any] = {
            "name": name,
            "shape": list(tensor.shape),
            "datatype": datatype_of(tensor.dtype),
        }
        if binary:
            raw = _raw_bytes(tensor)
            chunks.append(raw)
            items.append(ResponseOutput(**common, parameters={"binary_data_size": len(raw)}))
        else:
            items.append(ResponseOutput(**common, data=tensor.reshape(-1).tolist()))
    response = InferenceResponse(model_name=model, id=request.id, outputs=items)
    head = response.model_dump_json(exclude_none=True).encode()
    if not chunks:
        return head, None
    return head + b"".join(chunks), len(head)


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    import torch

    flat = tensor.reshape(-1)
    if flat.numel() == 0:
        return b""
    data: bytes = flat.view(torch.uint8).numpy().tobytes()
    return data


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()
