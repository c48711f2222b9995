"""The cluster admin's allowlists: a TRTModel whose refit Job would run an image or ServiceAccount the
operator does not allow stalls with RefitJobNotAllowed naming the field, and no Job is created."""

from __future__ import annotations

import pytest

from tests.unit.api.samples import body, model
from tests.unit.controller.objects import deployment
from tests.unit.controller.scenarios import NOW
from tests.unit.controller.test_reconcile_pass import MemoryCluster
from trtrefit.controller.config import OperatorConfig
from trtrefit.controller.policy import image_allowed, refit_job_violation
from trtrefit.controller.reconcile import reconcile

WORKER = "ghcr.io/trtrefit/trt-refit-worker"
CONFIG = OperatorConfig(
    worker_image=f"{WORKER}:0.1.0",
    allowed_images=(WORKER, "registry.corp/ml/"),
    allowed_service_accounts=("refit",),
)


@pytest.mark.parametrize(
    ("image", "allowed"),
    [
        (f"{WORKER}:0.1.0", True),
        (f"{WORKER}@sha256:{'a' * 64}", True),
        ("registry.corp/ml/worker:7", True),
        (f"{WORKER}-evil:1", False),
        ("docker.io/attacker/miner:latest", False),
        ("registry.corp/mlx/worker:7", False),
    ],
)
def test_image_prefixes(image: str, allowed: bool) -> None:
    assert image_allowed(image, CONFIG.allowed_images) is allowed
    assert image_allowed(image, ("*",)) and image_allowed(image, ())


def test_the_violation_names_the_field() -> None:
    m = model({"refitJob": {"image": "docker.io/attacker/miner:latest"}})
    assert refit_job_violation(m, "docker.io/attacker/miner:latest", CONFIG).startswith(
        "spec.refitJob.image docker.io/attacker/miner:latest is not allowed"
    )
    m = model({"refitJob": {"serviceAccountName": "cluster-admin-sa"}})
    assert "spec.refitJob.serviceAccountName cluster-admin-sa is not allowed" in refit_job_violation(
        m, f"{WORKER}:0.1.0", CONFIG
    )
    assert (
        refit_job_violation(model({"refitJob": {"serviceAccountName": "refit"}}), f"{WORKER}:1", CONFIG) == ""
    )


def test_a_refused_job_is_never_created_and_the_model_stalls() -> None:
    cluster = MemoryCluster(body({"refitJob": {"image": "docker.io/attacker/miner:latest"}}), deployment())
    result = reconcile(cluster, CONFIG, "vision", "resnet50", NOW)  # type: ignore[arg-type]
    assert cluster.jobs == {}
    status = cluster.model["status"]
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "RefitJobNotAllowed")
    assert "spec.refitJob.image docker.io/attacker/miner:latest is not allowed" in stalled["message"]
    assert [(e.type, e.reason) for e in result.events] == [("Warning", "RefitJobNotAllowed")]
