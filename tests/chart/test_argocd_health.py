"""The Argo CD health check on TRTModels shaped by DESIGN.md's status contract, one per moment of a refit.

The same check runs on objects the real operator wrote in tests/integration/test_chart_rbac_e2e.py.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.chart.argocd import HEALTH_LUA, argocd_health

T0 = "2026-11-28T10:00:00Z"


def _condition(kind: str, status: str, reason: str, message: str = "", generation: int = 2) -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": T0,
    }


def _trtmodel(generation: int = 2, status: dict[str, Any] | None = None, **metadata: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "trtrefit.dev/v1alpha1",
        "kind": "TRTModel",
        "metadata": {"name": "resnet50", "namespace": "vision", "generation": generation, **metadata},
        "spec": {"checkpoint": {"uri": "s3://ckpt/resnet50/step-1200.safetensors"}},
    }
    if status is not None:
        obj["status"] = status
    return obj


def _status(phase: str, *conditions: dict[str, Any], generation: int = 2) -> dict[str, Any]:
    return {"observedGeneration": generation, "phase": phase, "conditions": list(conditions)}


CASES: dict[str, tuple[dict[str, Any], str, str]] = {
    "just created, no status yet": (_trtmodel(generation=1), "Progressing", "Waiting for the operator"),
    "status without observedGeneration": (
        _trtmodel(status={"phase": "Pending"}),
        "Progressing",
        "Waiting for the operator",
    ),
    "refitting": (
        _trtmodel(
            status=_status(
                "Refitting",
                _condition("Ready", "False", "Refitting", "Refit Job resnet50-refit-3f2a1b9c0d is running"),
                _condition(
                    "Reconciling", "True", "Refitting", "Refit Job resnet50-refit-3f2a1b9c0d is running"
                ),
                _condition("Stalled", "False", "Progressing"),
            )
        ),
        "Progressing",
        "Refit Job resnet50-refit-3f2a1b9c0d is running",
    ),
    "rolling out": (
        _trtmodel(
            status=_status(
                "RollingOut",
                _condition("Ready", "False", "RollingOut"),
                _condition("Reconciling", "True", "RollingOut", "2 of 3 pods serve the new engine"),
                _condition("Verified", "True", "VerificationPassed", "max abs error 0.0004"),
            )
        ),
        "Progressing",
        "2 of 3 pods serve the new engine",
    ),
    "ready": (
        _trtmodel(
            status=_status(
                "Ready",
                _condition("Ready", "True", "Serving", "Serving the engine refitted from step-1200"),
                _condition("Reconciling", "False", "Serving"),
                _condition("Stalled", "False", "Serving"),
                _condition("Verified", "True", "VerificationPassed"),
                _condition("RolledOut", "True", "RolloutComplete"),
            )
        ),
        "Healthy",
        "Serving the engine refitted from step-1200",
    ),
    "verification failed": (
        _trtmodel(
            status=_status(
                "Failed",
                _condition("Ready", "False", "VerificationFailed", "max abs error 0.31 > atol 0.01"),
                _condition("Reconciling", "False", "VerificationFailed"),
                _condition("Stalled", "True", "VerificationFailed", "max abs error 0.31 > atol 0.01"),
                _condition("Verified", "False", "VerificationFailed", "max abs error 0.31 > atol 0.01"),
            )
        ),
        "Degraded",
        "max abs error 0.31 > atol 0.01",
    ),
    "stalled without a message says its reason": (
        _trtmodel(status=_status("Failed", _condition("Stalled", "True", "ArtifactUnreadable"))),
        "Degraded",
        "ArtifactUnreadable",
    ),
    "spec bumped after Ready: the old Ready is stale": (
        _trtmodel(
            generation=3,
            status=_status(
                "Ready", _condition("Ready", "True", "Serving", "Serving step-1200"), generation=2
            ),
        ),
        "Progressing",
        "observe generation 3 (it has seen 2)",
    ),
    "spec bumped after a failure: the old Stalled is stale": (
        _trtmodel(
            generation=3,
            status=_status(
                "Failed", _condition("Stalled", "True", "VerificationFailed", "bad"), generation=2
            ),
        ),
        "Progressing",
        "observe generation 3",
    ),
    "not ready and nothing in flight (retrying)": (
        _trtmodel(
            status=_status(
                "Failed",
                _condition("Ready", "False", "JobFailed", "refit Job failed; retrying"),
                _condition("Reconciling", "False", "JobFailed"),
            )
        ),
        "Progressing",
        "refit Job failed; retrying",
    ),
    "conditions empty": (_trtmodel(status=_status("Pending")), "Progressing", "Phase Pending"),
    "being deleted": (
        _trtmodel(
            status=_status("Ready", _condition("Ready", "True", "Serving")),
            deletionTimestamp=T0,
            finalizers=["kopf.zalando.org/KopfFinalizerMarker"],
        ),
        "Progressing",
        "being deleted",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_health_follows_kstatus(case: str) -> None:
    obj, expected_status, expected_message = CASES[case]
    health = argocd_health(obj)
    assert health["status"] == expected_status
    assert expected_message in health["message"]


def test_script_uses_no_library_argo_cd_withholds() -> None:
    """Argo CD's sandbox has no os/io/require: the script must not mention them (the sandboxed run above would
    also fail on a call, but not on a branch the cases never take)."""
    code = HEALTH_LUA.read_text()
    assert not re.findall(r"\b(os|io|debug|package)\.|\b(require|dofile|loadfile|loadstring)\b", code)
    assert code.rstrip().endswith("return hs")
