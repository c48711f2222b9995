"""What fails stays away from traffic and says why: a failed verification, a Job that fails past its
backoffLimit, a result that is not a result, a rollout that never becomes available; and pausing."""

from __future__ import annotations

import pytest
from kubernetes import client

from tests.integration.conftest import OperatorProcess
from tests.integration.world import (
    OLD_ENGINE,
    SERVER,
    complete,
    condition,
    create_model,
    create_serving,
    engine_in_template,
    finish_pod,
    get_model,
    patch_spec,
    refit_jobs,
    rolled_out,
    running_pod,
    trtmodel,
    verification_failed,
    wait_events,
    wait_job,
    wait_phase,
    worker_error,
)
from tests.kubehelpers import wait_for

pytestmark = pytest.mark.integration


def _warnings(api: client.ApiClient, namespace: str, *reasons: str) -> dict[str, str]:
    """The Warning events' messages by reason, once the given reasons have been posted."""
    events = wait_events(api, namespace, *reasons)
    return {reason: message for kind, reason, message in events if kind == "Warning"}


def test_a_failed_verification_stalls_and_never_reaches_serving(
    kube_api: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_serving(kube_api, namespace)
    create_model(kube_api, namespace, trtmodel())
    job = wait_job(kube_api, namespace)
    complete(kube_api, job, verification_failed())
    failed = wait_phase(kube_api, namespace, "Failed", timeout=90)

    stalled, verified = condition({"status": failed}, "Stalled"), condition({"status": failed}, "Verified")
    assert (stalled["status"], stalled["reason"]) == ("True", "VerificationFailed")
    assert "max abs error 0.42 (atol 0.01)" in stalled["message"]
    assert (verified["status"], verified["reason"]) == ("False", "VerificationFailed")
    assert condition({"status": failed}, "Reconciling")["status"] == "False"
    assert failed["lastRefit"]["verification"] == {
        "passed": False, "maxAbsError": 0.42, "maxRelError": 0.8, "minCosineSimilarity": 0.91
    }  # fmt: skip
    assert engine_in_template(kube_api, namespace) == OLD_ENGINE
    assert "0.42" in _warnings(kube_api, namespace, "VerificationFailed")["VerificationFailed"]
    (only,) = refit_jobs(kube_api, namespace)  # the Job failed at once (podFailurePolicy), not retried
    assert only.metadata.uid == job.metadata.uid
    assert any(c.type == "Failed" and c.status == "True" for c in only.status.conditions)


def test_a_job_failing_past_its_backoff_limit_reports_the_last_pod_message(
    kube_api: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_serving(kube_api, namespace)
    create_model(kube_api, namespace, trtmodel(refitJob={"backoffLimit": 1}))
    job = wait_job(kube_api, namespace)
    first = complete(kube_api, job, worker_error("cannot read s3://ckpt/tiny/step-1.safetensors: timed out"))

    def second_pod() -> client.V1Pod | None:
        pod = running_pod(kube_api, job)
        return pod if pod.metadata.uid != first.metadata.uid else None

    retry = wait_for(second_pod, timeout=60, what="the Job's second pod")
    assert retry is not None
    finish_pod(
        kube_api, retry, worker_error("cannot read s3://ckpt/tiny/step-1.safetensors: NoSuchKey").to_json(), 1
    )
    failed = wait_phase(kube_api, namespace, "Failed", timeout=90)
    stalled = condition({"status": failed}, "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "RefitFailed")
    assert "NoSuchKey" in stalled["message"] and "timed out" not in stalled["message"]
    assert failed["lastRefit"]["outcome"] == "Failed"
    assert "NoSuchKey" in _warnings(kube_api, namespace, "RefitFailed")["RefitFailed"]
    assert engine_in_template(kube_api, namespace) == OLD_ENGINE
    assert operator.alive()


def test_a_termination_message_that_is_not_a_result_is_shown_as_it_is(
    kube_api: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_serving(kube_api, namespace)
    create_model(kube_api, namespace, trtmodel())
    pod = running_pod(kube_api, wait_job(kube_api, namespace))
    finish_pod(
        kube_api, pod, "Traceback (most recent call last):\n  ...\nValueError: bad safetensors header\n", 1
    )
    failed = wait_phase(kube_api, namespace, "Failed", timeout=90)
    message = condition({"status": failed}, "Stalled")["message"]
    assert "ValueError: bad safetensors header" in message and "\n" not in message
    assert operator.alive()


def test_a_rollout_past_its_progress_deadline_is_reverted(
    kube_api: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_serving(kube_api, namespace, progress_deadline=5)
    create_model(kube_api, namespace, trtmodel())
    job = wait_job(kube_api, namespace)
    pod = running_pod(kube_api, job)
    # From now on no new pod fits in the namespace: the new ReplicaSet cannot make progress.
    core = client.CoreV1Api(kube_api)
    quota = {"metadata": {"name": "no-more-pods"}, "spec": {"hard": {"pods": "2"}}}
    core.create_namespaced_resource_quota(namespace, quota)
    wait_for(
        lambda: (core.read_namespaced_resource_quota("no-more-pods", namespace).status.used or {}).get(
            "pods"
        ),
        timeout=60,
        what="the quota's usage counted",
    )
    published = complete(kube_api, job)
    assert published.metadata.uid == pod.metadata.uid

    failed = wait_phase(kube_api, namespace, "Failed", timeout=120)
    stalled = condition({"status": failed}, "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "RolloutReverted")
    assert f"reverted to engine {OLD_ENGINE}" in stalled["message"]
    assert failed["lastRefit"]["rollout"]["outcome"] == "Reverted"
    assert engine_in_template(kube_api, namespace) == OLD_ENGINE
    deployment = client.AppsV1Api(kube_api).read_namespaced_deployment(SERVER, namespace)
    assert deployment.metadata.annotations["trtrefit.dev/reverted-refit"] == failed["lastRefit"]["key"]
    assert "RolloutReverted" in _warnings(kube_api, namespace, "RolloutReverted")
    core.delete_namespaced_resource_quota("no-more-pods", namespace)
    wait_for(lambda: rolled_out(kube_api, namespace), timeout=90, what="the reverted Deployment available")
    assert (
        get_model(kube_api, namespace)["status"]["phase"] == "Failed"
    )  # no second attempt at the same refit


def test_paused_starts_nothing_until_resumed(
    kube_api: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_serving(kube_api, namespace)
    create_model(kube_api, namespace, trtmodel(paused=True))
    pending = wait_phase(kube_api, namespace, "Pending")
    reconciling = condition({"status": pending}, "Reconciling")
    assert (reconciling["status"], reconciling["reason"]) == ("False", "Paused")
    assert refit_jobs(kube_api, namespace) == []
    patch_spec(kube_api, namespace, {"paused": False})
    complete(kube_api, wait_job(kube_api, namespace))
    wait_phase(kube_api, namespace, "Ready", timeout=120)
    wait_events(kube_api, namespace, "Paused", "Resumed", "RefitStarted")
