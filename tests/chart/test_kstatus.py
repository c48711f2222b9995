"""The Argo CD health check and kstatus (what Flux waits with) agree on every TRTModel moment, computed by the
real kstatus library (sigs.k8s.io/cli-utils) on the same objects.

One deliberate difference: kstatus calls an object without conditions Current (its generic default), while
the health check says Progressing until the operator has written a status. docs/gitops.md explains it.
"""

from __future__ import annotations

import pytest

from tests.chart.argocd import argocd_health
from tests.chart.kstatus import kstatus
from tests.chart.test_argocd_health import CASES

# kstatus -> Argo CD health, for objects the operator has written conditions on.
AGREES = {
    "Current": "Healthy",
    "InProgress": "Progressing",
    "Failed": "Degraded",
    "Terminating": "Progressing",
}


@pytest.fixture(scope="module")
def computed() -> dict[str, dict[str, str]]:
    return dict(zip(CASES, kstatus([obj for obj, _, _ in CASES.values()]), strict=True))


@pytest.mark.parametrize("case", CASES)
def test_argo_health_matches_kstatus(computed: dict[str, dict[str, str]], case: str) -> None:
    obj = CASES[case][0]
    health = argocd_health(obj)["status"]
    if not obj.get("status", {}).get("conditions") and "deletionTimestamp" not in obj["metadata"]:
        assert (computed[case]["status"], health) == ("Current", "Progressing")
    else:
        assert AGREES[computed[case]["status"]] == health


def test_ready_is_the_only_current_and_stalled_the_only_failed(computed: dict[str, dict[str, str]]) -> None:
    for case, (obj, _, _) in CASES.items():
        conditions = {c["type"]: c["status"] for c in obj.get("status", {}).get("conditions", [])}
        if not conditions or "deletionTimestamp" in obj["metadata"]:
            continue
        fresh = obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
        assert (computed[case]["status"] == "Current") == (fresh and conditions.get("Ready") == "True"), case
        assert (computed[case]["status"] == "Failed") == (fresh and conditions.get("Stalled") == "True"), case
