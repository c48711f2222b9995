"""Real TRTModel objects as the API server returns them, for tests."""

from __future__ import annotations

import copy
from typing import Any

from trtrefit.api.trtmodel import API_VERSION, KIND, TRTModel

SPEC: dict[str, Any] = {
    "engine": {"uri": "s3://models/resnet50/engine.ep"},
    "source": {"uri": "s3://models/resnet50/source.pt2"},
    "checkpoint": {"uri": "s3://ckpt/resnet50/step-1200.safetensors"},
    "verify": {"generate": [{"shape": [8, 3, 224, 224], "dtype": "float32"}], "seed": 0},
    "publish": {"uri": "s3://models/resnet50/refits/"},
    "serving": {"deploymentName": "resnet50-server", "containerName": "server"},
}


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` merged in recursively (a None value removes the key)."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def body(
    spec: dict[str, Any] | None = None,
    *,
    name: str = "resnet50",
    namespace: str = "vision",
    uid: str = "0b7c4a7e-1111-4222-8333-444455556666",
    generation: int = 1,
    status: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A TRTModel as the API server returns it: `spec` is merged over the sample spec."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid,
            "generation": generation,
            "resourceVersion": "100",
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": merged(SPEC, spec or {}),
        **({"status": status} if status is not None else {}),
    }


def model(spec: dict[str, Any] | None = None, **kwargs: Any) -> TRTModel:
    return TRTModel.model_validate(body(spec, **kwargs))
