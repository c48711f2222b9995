"""The platform's own faults, on a real control plane of this module's own (the restarts must not disturb
the session's): kube-apiserver and etcd (data kept) stopped for a few seconds while a refit runs, while a
rollout is under way, while an InPlace canary refits; a serving pod's process killed while it refits. The
operator is a real subprocess, the refit and serving pods real processes run by hack/fakekubelet.py, which
must ride the same outages. The faults and their moments come from hack/faults.py, shared with
bench/platform_faults.py. Each stage ends with the TRTModel Ready on the right checkpoint, nothing published
beyond what it served, no stray Jobs, and status and Events that tell the story."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
import yaml
from kubernetes import client

from demo import FIRST
from fakekubelet import FakeKubelet
from faults import (
    INPLACE_APP,
    NAME,
    Scene,
    Stage,
    event_reasons,
    inplace_scenario,
    jobs,
    restart_scenario,
    until,
)
from faults import restarts_of as pod_restarts
from inplace import pod_states
from localcluster import LocalCluster
from tests.e2e.conftest import Artifacts
from tests.integration.conftest import REPO, OperatorProcess, admin, own_cluster
from tests.integration.world import condition, engine_in_template
from tests.kubehelpers import wait_for
from trtrefit.api.crd import CRD_PATH

__all__ = ["admin", "own_cluster"]

# Setup (a control plane of its own) and three outages with their recoveries outlast the suite's 300 s on
# a loaded machine.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


# This module's control plane stands in for the session's: every fixture below it (namespace, operator,
# kubelet) then runs on it.
@pytest.fixture(scope="module")
def cluster(own_cluster: LocalCluster) -> LocalCluster:
    return own_cluster


@pytest.fixture(scope="module")
def kube_api(admin: client.ApiClient) -> client.ApiClient:
    return admin


@pytest.fixture(scope="module")
def trtmodel_crd(kube_api: client.ApiClient) -> Iterator[str]:
    """The committed CRD on this module's control plane, Established."""
    crd = yaml.safe_load((REPO / CRD_PATH).read_text())
    ext = client.ApiextensionsV1Api(kube_api)
    ext.create_custom_resource_definition(crd)
    name: str = crd["metadata"]["name"]

    def established() -> bool:
        conditions = ext.read_custom_resource_definition(name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    wait_for(established, timeout=30, what=f"CRD {name} Established")
    yield name


def _quiet_conditions(status: dict[str, object]) -> None:
    model = {"status": status}
    assert condition(model, "Ready")["status"] == "True"
    assert condition(model, "Stalled")["status"] == "False"
    assert condition(model, "Reconciling")["status"] == "False"


def test_restart_strategy_rides_out_api_server_and_etcd_restarts_mid_refit_and_mid_rollout(
    *,
    cluster: LocalCluster,
    kube_api: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    kubelet: FakeKubelet,
    artifacts: Artifacts,
) -> None:
    fs = artifacts.fs()
    publish = f"models/demo/refits-{namespace}/"

    def check(stage: Stage) -> None:
        recovery, status = stage.recovery, stage.recovery.status
        where = f"after {recovery.fault} ({recovery.caught})"
        _quiet_conditions(status)
        assert status["serving"]["checkpoint"]["uri"] == stage.checkpoint, where
        # What serves is what the Deployment runs, and it is the only engine published besides those it
        # replaced: a refit that ran twice, or a Job left over, would show here.
        engine = status["serving"]["engine"]["uri"]
        assert engine_in_template(kube_api, namespace, "demo-server") == engine, where
        served = {engine} | {h["engine"]["uri"] for h in status.get("history", [])}
        published = {f"s3://{p}" for p in fs.ls(publish, refresh=True) if p.endswith(".ep")}
        assert published <= served and engine in published, (published, served)
        # One Job per refit, each finished by its one pod, and the last is the one status names.
        found = jobs(kube_api, namespace)
        assert len(found) <= stage.refits and not [j.metadata.name for j in found if j.status.active], where
        assert all(j.status.succeeded == 1 and not j.status.failed for j in found), where
        assert status["lastRefit"]["job"] in {j.metadata.name for j in found}, where
        assert status["lastRefit"]["verification"]["passed"] is True

        def all_told() -> list[str] | None:
            reasons = event_reasons(kube_api, namespace, NAME)
            return reasons if reasons.count("RolloutComplete") == stage.refits else None

        reasons = until(all_told, timeout=30, what=f"{stage.refits} RolloutComplete Events")
        assert reasons.count("RefitStarted") == stage.refits, reasons  # no refit started twice
        assert reasons.count("RefitPassed") == stage.refits, reasons
        assert not {"RefitFailed", "VerificationFailed", "RolloutFailed"} & set(reasons), reasons

    first_sha256 = hashlib.sha256(artifacts.local["step-1"].read_bytes()).hexdigest()
    scene = Scene(cluster, kube_api, namespace, kubelet)
    recoveries = restart_scenario(scene, first_sha256, after=check)
    assert [r.fault for r in recoveries] == [
        "kube-apiserver restart mid-refit",
        "etcd restart mid-refit",
        "kube-apiserver restart mid-rollout",
    ]
    assert "Refitting" in recoveries[0].caught and "Refitting" in recoveries[1].caught
    # The operator had patched the Deployment (it may not have written RollingOut yet); not Ready.
    assert recoveries[2].caught.startswith("Deployment patched"), recoveries[2].caught
    assert recoveries[-1].status["serving"]["checkpoint"] == {"uri": FIRST, "sha256": first_sha256}
    # The fake kubelet saw both API server outages and rode them out. With only etcd away the API server
    # still answers its reads from the watch cache, so that one may pass it by.
    assert kubelet.outage.outages >= 2, kubelet.outage
    assert not kubelet.outage.down


def test_inplace_rides_out_an_api_server_restart_mid_canary_and_a_pod_killed_mid_refit(
    *,
    cluster: LocalCluster,
    kube_api: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    kubelet: FakeKubelet,
) -> None:
    def check(stage: Stage) -> None:
        status, where = stage.recovery.status, f"after {stage.recovery.fault} ({stage.recovery.caught})"
        _quiet_conditions(status)
        assert status["pods"]["ready"] == status["pods"]["current"] == 2, where
        states = pod_states(kube_api, namespace, INPLACE_APP, NAME)
        served = {n: s.checkpoint.uri if s and s.checkpoint else None for n, s in states.items()}
        assert set(served.values()) == {stage.checkpoint}, (where, served)
        assert jobs(kube_api, namespace) == [], "InPlace runs no Job"
        reasons = event_reasons(kube_api, namespace, NAME)
        assert reasons.count("RolloutComplete") >= stage.refits, (where, reasons)
        assert not {"RefitFailed", "VerificationFailed"} & set(reasons), (where, reasons)

    scene = Scene(cluster, kube_api, namespace, kubelet)
    recoveries = inplace_scenario(scene, after=check)
    assert [r.fault for r in recoveries] == [
        "kube-apiserver restart mid-canary",
        "serving pod killed mid-refit",
    ]
    # Only the killed pod restarted, once, in place; the API outage restarted nothing.
    victim = recoveries[1].caught.rsplit("killed ", 1)[1]
    assert pod_restarts(kube_api, namespace, INPLACE_APP) == {
        name: int(name == victim) for name in pod_restarts(kube_api, namespace, INPLACE_APP)
    }
