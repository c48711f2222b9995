"""Pure builders of the objects an InPlace rollout owns: the refit token Secret and the ConfigMap holding the
refit request a starting pod performs before it becomes Ready. Both are owned by the TRTModel (garbage
collected with it); the serving pods read them through their environment (`serving_env`)."""

from __future__ import annotations

import base64
from typing import Any

from trtrefit.api.request import RefitRequest
from trtrefit.api.serving import DESIRED_ENV, DESIRED_KEY, TOKEN_ENV, TOKEN_KEY
from trtrefit.api.trtmodel import TRTModel
from trtrefit.controller.builders import owner_reference
from trtrefit.controller.naming import (
    INSTANCE_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    MODEL_LABEL,
    MODEL_UID_LABEL,
    REFIT_KEY_ANNOTATION,
    desired_config_map_name,
    token_secret_name,
)
from trtrefit.controller.serving_pods import DesiredConfig

Manifest = dict[str, Any]


def _metadata(model: TRTModel, name: str) -> Manifest:
    return {
        "name": name,
        "namespace": model.metadata.namespace,
        "labels": {
            INSTANCE_LABEL: model.metadata.name,
            MANAGED_BY_LABEL: MANAGED_BY,
            MODEL_LABEL: model.metadata.name,
            MODEL_UID_LABEL: model.metadata.uid or "",
        },
        "ownerReferences": [owner_reference(model)],
    }


def build_token_secret(model: TRTModel, token: str) -> Manifest:
    """`<model>-trtrefit-token`: the bearer token the pods' refit endpoint accepts. Created once; the
    operator never rotates it on its own (running pods read it at start)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(model, token_secret_name(model.metadata.name)),
        "type": "Opaque",
        "data": {TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def build_desired_config_map(model: TRTModel, request: RefitRequest) -> Manifest:
    """`<model>-trtrefit`: the refit request a starting pod performs and verifies before it is Ready."""
    metadata = _metadata(model, desired_config_map_name(model.metadata.name))
    metadata["annotations"] = {REFIT_KEY_ANNOTATION: request.key or ""}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {DESIRED_KEY: request.wire()},
    }


def build_config_map_update(config: DesiredConfig, request: RefitRequest) -> Manifest:
    """Merge patch that moves the ConfigMap to `request`, conditional on the resourceVersion read (a
    concurrent change makes it fail with 409 instead of racing)."""
    return {
        "metadata": {
            "resourceVersion": config.resource_version,
            "annotations": {REFIT_KEY_ANNOTATION: request.key or ""},
        },
        "data": {DESIRED_KEY: request.wire()},
    }


def serving_env(model_name: str) -> list[Manifest]:
    """The env entries a serving container of an InPlace TRTModel needs (documented in docs/api.md): both
    required, so the kubelet holds the pod until the operator created the objects."""
    return [
        {
            "name": TOKEN_ENV,
            "valueFrom": {"secretKeyRef": {"name": token_secret_name(model_name), "key": TOKEN_KEY}},
        },
        {
            "name": DESIRED_ENV,
            "valueFrom": {
                "configMapKeyRef": {"name": desired_config_map_name(model_name), "key": DESIRED_KEY}
            },
        },
    ]
