"""RBAC truth for the InPlace strategy: the real operator, holding only a token of the chart's own
ServiceAccount (as tests/integration/test_chart_rbac_e2e.py runs it), creates the token Secret and the
desired-refit ConfigMap, reads the serving pods, talks to real `trtrefit serve` processes (run by
hack/fakekubelet.py) and takes an InPlace TRTModel to Ready, then through a bump. A verb missing from the
chart shows up as a model that never gets there and as a 403 in the operator's log, which must have none."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client

from fakekubelet import FakeKubelet
from localcluster import LocalCluster, free_port
from tests.integration.test_chart_rbac_e2e import _install, _no_permission_errors, _start_operator
from tests.integration.test_inplace import (
    NAME,
    Bundle,
    bundle,
    in_place_model,
    key_of,
    serving_deployment,
    wait_ready_on,
)
from tests.integration.world import create_model, patch_spec

pytestmark = pytest.mark.integration
__all__ = ["bundle"]  # the module-scoped fixture, shared

NAMESPACE = "inplace"


def test_in_place_rollout_runs_on_the_chart_rights_alone(
    own_cluster: LocalCluster, admin: client.ApiClient, tmp_path: Path, bundle: Bundle
) -> None:
    client.CoreV1Api(admin).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
    _install(own_cluster, admin, tmp_path / "helm", release="trt", namespace="trtrefit-system", values={})
    operator = _start_operator(admin, own_cluster, tmp_path, "trt", "trtrefit-system")
    try:
        with FakeKubelet(api=admin, namespaces=[NAMESPACE], log_dir=tmp_path / "pods").running():
            _roll_out_twice(admin, bundle)
            _no_permission_errors(operator)
    finally:
        operator.stop()
        print(operator.output()[-3000:])


def _roll_out_twice(admin: client.ApiClient, bundle: Bundle) -> None:
    """A first checkpoint and a bump, each until every serving pod serves it."""
    port = free_port()
    client.AppsV1Api(admin).create_namespaced_deployment(NAMESPACE, serving_deployment(port))
    create_model(admin, NAMESPACE, in_place_model(bundle, "a.safetensors", port))
    status = wait_ready_on(admin, NAMESPACE, key_of(admin, NAMESPACE))
    assert status["pods"]["summary"] == "2/2"
    patch_spec(admin, NAMESPACE, {"checkpoint": {"uri": bundle.uri("b.safetensors")}}, name=NAME)
    status = wait_ready_on(admin, NAMESPACE, key_of(admin, NAMESPACE), timeout=60)
    assert (
        status["lastRefit"]["outcome"] == "Passed" and status["lastRefit"]["rollout"]["outcome"] == "Complete"
    )
