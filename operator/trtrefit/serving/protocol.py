"""The Open Inference Protocol v2 (KServe's "V2", Triton's HTTP/REST API) as pydantic models: what crosses
the wire between clients and `trtrefit serve`.

Field names are the protocol's own (snake_case on the wire). Unknown request fields are ignored, as the
protocol lets clients send extension parameters.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# Extension names a client can see in the server metadata: Triton's binary tensor data and our own.
BINARY_EXTENSION = "binary_tensor_data"
TRTREFIT_EXTENSION = "trtrefit"
HEADER_LENGTH = "Inference-Header-Content-Length"


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")


class MetadataTensor(_Message):
    name: str
    datatype: str
    shape: list[int]


class ServerMetadata(_Message):
    name: str
    version: str
    extensions: list[str]


class ModelMetadata(_Message):
    """The protocol's model metadata plus, under `trtrefit`, the ServingState of the process (a
    documented extension: what checkpoint serves, since when, the last refit)."""

    model_config = ConfigDict(extra="allow")

    name: str
    versions: list[str] = Field(default_factory=list)
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class ModelReady(_Message):
    name: str
    ready: bool


class RequestInput(_Message):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: list[Any] | None = None


class RequestOutput(_Message):
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferenceRequest(_Message):
    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(_Message):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(_Message):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[ResponseOutput]


class ErrorBody(_Message):
    error: str
