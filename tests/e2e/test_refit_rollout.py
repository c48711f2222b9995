"""What a user sees, read from the API: the TRTModel's status and Events, and the serving Deployment."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from kubernetes import client

from demo import FIRST, SECOND, serving_deployment, settled_on, trtmodel
from fakekubelet import FakeKubelet
from tests.e2e.conftest import Artifacts
from tests.integration.conftest import OperatorProcess
from tests.integration.world import condition, get_model, patch_spec, refit_jobs, wait_events, wait_phase
from tests.kubehelpers import wait_for

pytestmark = pytest.mark.e2e

NAME, SERVER, PUBLISH = "demo", "demo-server", "s3://models/demo/refits/"


def _setup(api: client.ApiClient, namespace: str, checkpoint: str = FIRST) -> None:
    client.AppsV1Api(api).create_namespaced_deployment(namespace, serving_deployment())
    body = trtmodel(checkpoint, "default")
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        "trtrefit.dev", "v1alpha1", namespace, "trtmodels", body
    )


def _template(api: client.ApiClient, namespace: str) -> tuple[str, dict[str, str]]:
    template = client.AppsV1Api(api).read_namespaced_deployment(SERVER, namespace).spec.template
    (env,) = [e.value for e in template.spec.containers[0].env if e.name == "TRT_ENGINE_URI"]
    return env, dict(template.metadata.annotations or {})


def _ready_on(api: client.ApiClient, namespace: str, checkpoint: str) -> dict[str, Any]:
    """The status once the model is Ready serving `checkpoint` for its current generation."""
    serves = settled_on(checkpoint)

    def settled() -> dict[str, Any] | None:
        model = get_model(api, namespace, NAME)
        return dict(model["status"]) if serves(model) else None

    return wait_for(settled, timeout=120, what=f"Ready serving {checkpoint}")


def _served_engine_is_content_addressed(artifacts: Artifacts, status: dict[str, Any]) -> str:
    engine = status["serving"]["engine"]
    assert engine["uri"] == f"{PUBLISH}{engine['sha256']}.ep"
    data = artifacts.fs().cat_file(engine["uri"])
    assert hashlib.sha256(data).hexdigest() == engine["sha256"]
    return str(engine["uri"])


def _rolled_into_the_template(
    api: client.ApiClient, namespace: str, artifacts: Artifacts, status: dict[str, Any]
) -> str:
    """The served engine is content-addressed and is what the serving pod template names and pins."""
    engine = _served_engine_is_content_addressed(artifacts, status)
    env, annotations = _template(api, namespace)
    assert env == engine
    assert annotations["trtrefit.dev/engine-sha256"] == status["serving"]["engine"]["sha256"]
    return engine


def _pod_engines(api: client.ApiClient, namespace: str) -> set[str]:
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector="app=demo-server").items
    return {
        env.value
        for pod in pods
        if pod.metadata.deletion_timestamp is None
        for env in pod.spec.containers[0].env
        if env.name == "TRT_ENGINE_URI"
    }


def test_first_rollout_then_a_checkpoint_bump_rolls_the_new_engine(
    kube_api: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    kubelet: FakeKubelet,
    artifacts: Artifacts,
) -> None:
    _setup(kube_api, namespace)
    first = _ready_on(kube_api, namespace, FIRST)
    first_engine = _rolled_into_the_template(kube_api, namespace, artifacts, first)
    verification = first["lastRefit"]["verification"]
    assert verification["passed"] is True and verification["maxAbsError"] <= 0.01

    patch_spec(kube_api, namespace, {"checkpoint": {"uri": SECOND}}, name=NAME)
    second = _ready_on(kube_api, namespace, SECOND)
    second_engine = _rolled_into_the_template(kube_api, namespace, artifacts, second)
    assert second_engine != first_engine
    wait_for(
        lambda: _pod_engines(kube_api, namespace) == {second_engine},
        timeout=60,
        what="every serving pod on the second engine",
    )
    posted = ["RolloutComplete", "RefitPassed"] * 2
    reasons = [reason for _, reason, _ in wait_events(kube_api, namespace, *posted, name=NAME)]
    assert reasons.count("RolloutComplete") == 2 and reasons.count("RefitPassed") == 2


def _stalled_and_untouched(
    api: client.ApiClient, namespace: str, before: tuple[str, dict[str, str]], reason_text: str
) -> dict[str, Any]:
    status = wait_phase(api, namespace, "Failed", timeout=120, name=NAME)
    model = get_model(api, namespace, NAME)
    stalled = condition(model, "Stalled")
    assert stalled["status"] == "True"
    assert reason_text in stalled["message"], stalled["message"]
    assert condition(model, "Ready")["status"] == "False"
    assert _template(api, namespace) == before, "a failed refit must never touch what is serving"
    return status


def test_bad_checkpoints_stall_without_touching_serving_and_a_good_one_recovers(
    kube_api: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    kubelet: FakeKubelet,
    artifacts: Artifacts,
) -> None:
    _setup(kube_api, namespace)
    served = _ready_on(kube_api, namespace, FIRST)["serving"]
    before = _template(kube_api, namespace)

    # A wrong shape: the worker names the key before any refit work.
    patch_spec(
        kube_api, namespace, {"checkpoint": {"uri": "s3://ckpt/demo/wrong-shape.safetensors"}}, name=NAME
    )
    status = _stalled_and_untouched(kube_api, namespace, before, "does not match engine")
    assert status["serving"] == served

    # A pinned digest the bytes do not have.
    wrong = "0" * 64
    patch_spec(kube_api, namespace, {"checkpoint": {"uri": SECOND, "sha256": wrong}}, name=NAME)
    _stalled_and_untouched(kube_api, namespace, before, "sha256")

    # Non-finite weights: outputs drift beyond every tolerance; Verified=False with the numbers.
    patch_spec(
        kube_api,
        namespace,
        {"checkpoint": {"uri": "s3://ckpt/demo/nonfinite.safetensors", "sha256": None}},
        name=NAME,
    )
    status = _stalled_and_untouched(kube_api, namespace, before, "")
    model = get_model(kube_api, namespace, NAME)
    assert condition(model, "Verified")["status"] == "False"
    assert status["lastRefit"]["verification"]["passed"] is False
    warnings = [
        m
        for kind, reason, m in wait_events(kube_api, namespace, "VerificationFailed", name=NAME)
        if reason == "VerificationFailed"
    ]
    assert warnings and "error" in warnings[-1]

    # Recovery: a good checkpoint rolls out.
    patch_spec(kube_api, namespace, {"checkpoint": {"uri": SECOND}}, name=NAME)
    recovered = _ready_on(kube_api, namespace, SECOND)
    _rolled_into_the_template(kube_api, namespace, artifacts, recovered)


def test_deleting_the_trtmodel_cleans_up_its_jobs(
    kube_api: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    kubelet: FakeKubelet,
    artifacts: Artifacts,
) -> None:
    _setup(kube_api, namespace)
    _ready_on(kube_api, namespace, FIRST)
    assert refit_jobs(kube_api, namespace)
    client.CustomObjectsApi(kube_api).delete_namespaced_custom_object(
        "trtrefit.dev", "v1alpha1", namespace, "trtmodels", NAME
    )
    wait_for(lambda: not refit_jobs(kube_api, namespace), timeout=60, what="refit Jobs deleted")
    wait_for(
        lambda: (
            not client.CustomObjectsApi(kube_api).list_namespaced_custom_object(
                "trtrefit.dev", "v1alpha1", namespace, "trtmodels"
            )["items"]
        ),
        timeout=60,
        what="the TRTModel gone",
    )
    # The serving Deployment is the user's: it stays, on the last good engine.
    assert client.AppsV1Api(kube_api).read_namespaced_deployment(SERVER, namespace)
