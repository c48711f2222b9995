"""Child objects as the API server returns them (Jobs, pods, Deployments), for the controller's unit tests."""

from __future__ import annotations

from typing import Any

from trtrefit.api.result import Outcome, PublishedEngine, RefitPath, RefitResult, Verification
from trtrefit.controller.naming import (
    ENGINE_SHA256_ANNOTATION,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    MODEL_UID_LABEL,
    REFIT_KEY_ANNOTATION,
    REFIT_KEY_LABEL,
    REVERTED_ANNOTATION,
)

T0 = "2026-01-02T03:00:00Z"
T1 = "2026-01-02T03:00:42Z"
ENGINE_SHA = "e" * 64
PUBLISHED = f"s3://models/resnet50/refits/{ENGINE_SHA}.ep"  # what the worker publishes


def job(
    name: str, key: str, *, state: str = "Running", uid: str = "job-uid", reason: str = "", message: str = ""
) -> dict[str, Any]:
    conditions = []
    if state == "Complete":
        conditions = [{"type": "Complete", "status": "True", "lastTransitionTime": T1}]
    elif state == "Failed":
        conditions = [
            {
                "type": "Failed",
                "status": "True",
                "reason": reason,
                "message": message,
                "lastTransitionTime": T1,
            }
        ]
    status: dict[str, Any] = {"startTime": T0, "conditions": conditions}
    if state == "Complete":
        status["completionTime"] = T1
    return {
        "metadata": {
            "name": name,
            "uid": uid,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY, MODEL_UID_LABEL: "m", REFIT_KEY_LABEL: key},
            "creationTimestamp": T0,
        },
        "status": status,
    }


def passed(uri: str = PUBLISHED, *, max_abs: float = 1e-3) -> RefitResult:
    return RefitResult(
        outcome=Outcome.PASSED,
        message="refitted 161 weights",
        backend="exported",
        path=RefitPath.EXPORTED,
        engine=PublishedEngine(uri=uri, sha256=ENGINE_SHA),
        verification=Verification(
            passed=True, max_abs_error=max_abs, max_rel_error=2e-3, min_cosine_similarity=0.99999
        ),
    )


def failed_verification() -> RefitResult:
    return RefitResult(
        outcome=Outcome.VERIFICATION_FAILED,
        message="output 0 misses atol",
        verification=Verification(
            passed=False, max_abs_error=0.5, max_rel_error=0.9, min_cosine_similarity=0.7
        ),
    )


def pod(
    name: str,
    job_uid: str = "job-uid",
    *,
    exit_code: int | None = 0,
    message: str = "",
    finished: str = T1,
    waiting: tuple[str, str] | None = None,
    unschedulable: str | None = None,
) -> dict[str, Any]:
    state: dict[str, Any]
    if exit_code is not None:
        state = {"terminated": {"exitCode": exit_code, "message": message, "finishedAt": finished}}
        phase = "Succeeded" if exit_code == 0 else "Failed"
    elif waiting is not None:
        state, phase = {"waiting": {"reason": waiting[0], "message": waiting[1]}}, "Pending"
    else:
        state, phase = {"running": {"startedAt": T0}}, "Running"
    status: dict[str, Any] = {"phase": phase, "containerStatuses": [{"name": "refit", "state": state}]}
    if unschedulable is not None:
        status = {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": unschedulable,
                }
            ],
        }
    return {
        "metadata": {"name": name, "ownerReferences": [{"kind": "Job", "uid": job_uid}]},
        "status": status,
    }


def deployment(
    *,
    name: str = "resnet50-server",
    engine: str | None = "s3://models/resnet50/engine.ep",
    key: str | None = None,
    sha: str | None = None,
    replicas: int = 2,
    generation: int = 1,
    observed: int | None = None,
    updated: int | None = None,
    available: int | None = None,
    deadline_exceeded: bool = False,
    reverted: str | None = None,
    containers: list[str] | None = None,
) -> dict[str, Any]:
    annotations = {k: v for k, v in ((REFIT_KEY_ANNOTATION, key), (ENGINE_SHA256_ANNOTATION, sha)) if v}
    env = [{"name": "TRT_ENGINE_URI", "value": engine}] if engine else []
    names = containers or ["server"]
    conditions = [
        {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable", "message": ""}
    ]
    if deadline_exceeded:
        conditions = [
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": 'ReplicaSet "x" has timed out progressing.',
            }
        ]
    return {
        "metadata": {
            "name": name,
            "generation": generation,
            "resourceVersion": "77",
            "annotations": {REVERTED_ANNOTATION: reverted} if reverted else {},
        },
        "spec": {
            "replicas": replicas,
            "template": {
                "metadata": {"annotations": annotations},
                "spec": {"containers": [{"name": n, "env": env if n == names[0] else []} for n in names]},
            },
        },
        "status": {
            "observedGeneration": generation if observed is None else observed,
            "replicas": replicas if updated is None else max(replicas, updated),
            "updatedReplicas": replicas if updated is None else updated,
            "availableReplicas": replicas if available is None else available,
            "conditions": conditions,
        },
    }


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies a merge patch."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = apply_merge_patch(out.get(key), value)
    return out
