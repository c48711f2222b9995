"""GitOps ownership (docs/gitops.md): every field the Restart strategy writes on a serving Deployment is owned
by the operator's field manager in the Deployment's managedFields, so Argo CD's
`ignoreDifferences: [{managedFieldsManagers: [trtrefit-operator]}]` ignores exactly what the operator
changed, and a GitOps tool that owns the rest of the Deployment sees no drift from us.

The fields are computed from the patch builder the operator itself uses, on the Deployment as the real API
server stored it after a real rollout (the real operator process; the test plays the refit pod's kubelet)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client

from tests.integration.conftest import OperatorProcess
from tests.integration.world import (
    SERVER,
    complete,
    create_model,
    create_serving,
    trtmodel,
    wait_job,
    wait_phase,
)
from trtrefit.api.status import Digest
from trtrefit.api.trtmodel import TRTModel
from trtrefit.controller.builders import build_rollout_patch
from trtrefit.controller.kube import Cluster
from trtrefit.controller.naming import FIELD_MANAGER
from trtrefit.controller.views import DeploymentView

pytestmark = pytest.mark.integration

CHECKPOINT = "s3://ckpt/tiny/step-1.safetensors"
# Strategic-merge lists of a pod template and the key that names their items (as managedFields' `k:{...}`).
MERGE_KEYS = {"containers": "name", "env": "name"}
# In the patch but not fields: a precondition, not a value.
NOT_FIELDS = {("f:metadata", "f:resourceVersion")}


def field_paths(patch: Any, path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """The leaves a strategic-merge patch sets, as fieldsV1 paths; null (a deletion) sets nothing."""
    if isinstance(patch, dict):
        paths: set[tuple[str, ...]] = set()
        for key, value in patch.items():
            if value is None:
                continue
            if isinstance(value, list) and key in MERGE_KEYS:
                merge_key = MERGE_KEYS[key]
                for item in value:
                    ident = "k:" + json.dumps({merge_key: item[merge_key]}, separators=(",", ":"))
                    rest = {k: v for k, v in item.items() if k != merge_key}
                    paths |= field_paths(rest, (*path, f"f:{key}", ident))
            else:
                paths |= field_paths(value, (*path, f"f:{key}"))
        return paths
    return {path} if path not in NOT_FIELDS else set()


def owns(fields: dict[str, Any], path: tuple[str, ...]) -> bool:
    node: Any = fields
    for step in path:
        if not isinstance(node, dict) or step not in node:
            return False
        node = node[step]
    return True


def managed_fields(api: client.ApiClient, namespace: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The Deployment as the API server sent it, fieldsV1 as plain dicts."""
    deployment = Cluster(api).get_deployment(namespace, SERVER)
    assert deployment is not None
    return deployment, deployment["metadata"]["managedFields"]


def test_every_field_the_restart_rollout_writes_is_owned_by_our_field_manager(
    kube_api: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_serving(kube_api, namespace)
    body = create_model(kube_api, namespace, trtmodel(checkpoint=CHECKPOINT))
    complete(kube_api, wait_job(kube_api, namespace, CHECKPOINT))
    ready = wait_phase(kube_api, namespace, "Ready", timeout=120)

    deployment, entries = managed_fields(kube_api, namespace)
    model = TRTModel.model_validate({**body, "status": {}})
    view = DeploymentView.of(deployment, model.spec.serving)
    patch = build_rollout_patch(
        model,
        view,
        Digest.model_validate(ready["serving"]["engine"]),
        Digest.model_validate(ready["serving"]["checkpoint"]),
        ready["lastRefit"]["key"],
    )
    written = field_paths(patch)
    assert len(written) >= 4, written  # the env value, the template's digest annotations, the model's

    ours = [e for e in entries if e["manager"] == FIELD_MANAGER]
    assert [(e["operation"], e["apiVersion"]) for e in ours] == [("Update", "apps/v1")], entries
    missing = sorted(p for p in written if not owns(ours[0]["fieldsV1"], p))
    assert missing == [], f"written by the operator but not owned by {FIELD_MANAGER}: {missing}"
    # And no other manager still claims them: the creator's entry lost the engine env value to us.
    others = [e for e in entries if e["manager"] != FIELD_MANAGER and e.get("fieldsV1")]
    shared = sorted(p for e in others for p in written if owns(e["fieldsV1"], p))
    assert shared == [], f"also owned by another manager: {shared}"
