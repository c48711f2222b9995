"""Recovering without a human where it can, saying exactly why where it cannot, on the real API server: a
Job-count ResourceQuota and a denying ValidatingAdmissionPolicy in status and Events, a Deployment claimed
by another TRTModel, a Job a queue keeps suspended, and the retry policy (a transient failure retried after
its backoff, a permanent one waiting for spec.refitJob or the retry annotation, a lost result said)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.integration.conftest import OperatorProcess
from tests.integration.world import (
    complete,
    condition,
    create_model,
    create_serving,
    engine_in_template,
    get_model,
    patch_spec,
    refit_jobs,
    running_pod,
    trtmodel,
    verification_failed,
    wait_events,
    wait_job,
    wait_phase,
)
from tests.kubehelpers import wait_for
from trtrefit.api.trtmodel import GROUP, PLURAL, VERSION

pytestmark = pytest.mark.integration

ATTEMPT = "trtrefit.dev/attempt"


def wait_reason(
    api: client.ApiClient, namespace: str, kind: str, reason: str, *, name: str = "tiny", timeout: float = 60
) -> dict[str, Any]:
    """The model's condition `kind` once its reason is `reason`."""

    def reached() -> dict[str, Any] | None:
        found = condition(get_model(api, namespace, name), kind)
        return found if found.get("reason") == reason else None

    found = wait_for(reached, timeout=timeout, what=f"{name} {kind} reason {reason}")
    assert found is not None
    return found


def attempt_job(api: client.ApiClient, namespace: str, attempt: int, timeout: float = 60) -> client.V1Job:
    """The live refit Job of this attempt."""

    def found() -> client.V1Job | None:
        jobs = [
            j
            for j in refit_jobs(api, namespace)
            if (j.metadata.annotations or {}).get(ATTEMPT) == str(attempt)
        ]
        return jobs[0] if jobs else None

    job: client.V1Job = wait_for(found, timeout=timeout, what=f"refit Job attempt {attempt}")
    return job


def test_a_job_quota_and_a_denying_admission_policy_are_said_with_their_http_status(
    kube_api: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    core = client.CoreV1Api(kube_api)
    create_serving(kube_api, namespace)
    quota = {"metadata": {"name": "no-jobs"}, "spec": {"hard": {"count/jobs.batch": "0"}}}
    core.create_namespaced_resource_quota(namespace, quota)
    wait_for(
        lambda: core.read_namespaced_resource_quota("no-jobs", namespace).status.hard,
        timeout=30,
        what="the quota counted",
    )
    create_model(kube_api, namespace, trtmodel())
    stalled = wait_reason(kube_api, namespace, "Stalled", "APIRequestDenied")
    assert stalled["status"] == "True"
    assert "create job tiny-refit-" in stalled["message"] and "HTTP 403 Forbidden" in stalled["message"]
    assert "exceeded quota: no-jobs" in stalled["message"]
    assert get_model(kube_api, namespace)["status"]["phase"] == "Pending"
    (event,) = [e for e in wait_events(kube_api, namespace, "APIRequestDenied") if e[1] == "APIRequestDenied"]
    assert event[0] == "Warning" and "HTTP 403 Forbidden" in event[2]
    assert refit_jobs(kube_api, namespace) == []

    core.delete_namespaced_resource_quota("no-jobs", namespace)  # the pass retries with backoff and goes on
    job = wait_job(kube_api, namespace, timeout=90)
    with denied_rollouts(kube_api, namespace):
        complete(kube_api, job)
        stalled = wait_reason(kube_api, namespace, "Stalled", "APIRequestDenied", timeout=90)
        assert "patch deployment tiny-server failed: HTTP 403 Forbidden" in stalled["message"]
        assert "engine pins are frozen here" in stalled["message"]
        model = get_model(kube_api, namespace)
        assert condition(model, "Verified")["status"] == "True"  # the refit's verdict stands
        assert model["status"]["lastRefit"]["outcome"] == "Passed"
        assert engine_in_template(kube_api, namespace) != model["status"]["lastRefit"]["engine"]["uri"]
    ready = wait_phase(kube_api, namespace, "Ready", timeout=120)
    assert condition({"status": ready}, "Stalled")["status"] == "False"


@contextlib.contextmanager
def denied_rollouts(api: client.ApiClient, namespace: str) -> Iterator[None]:
    """A ValidatingAdmissionPolicy (GA since 1.30) that refuses, in this namespace only, any Deployment whose
    pod template carries our engine digest annotation; removed on exit."""
    admission = client.AdmissionregistrationV1Api(api)
    name = f"deny-engine-pins-{namespace}"[:63]
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["apps"],
                        "apiVersions": ["v1"],
                        "operations": ["UPDATE"],
                        "resources": ["deployments"],
                    }
                ]
            },
            "validations": [
                {
                    "expression": (
                        "!has(object.spec.template.metadata.annotations) || "
                        "!('trtrefit.dev/engine-sha256' in object.spec.template.metadata.annotations)"
                    ),
                    "message": "engine pins are frozen here",
                    "reason": "Forbidden",
                }
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
            },
        },
    }
    admission.create_validating_admission_policy(policy)
    admission.create_validating_admission_policy_binding(binding)
    apps = client.AppsV1Api(api)

    def enforced() -> bool:  # the policy reaches the API server's admission a moment after it is created
        try:
            apps.patch_namespaced_deployment(
                "tiny-server",
                namespace,
                {
                    "spec": {
                        "template": {"metadata": {"annotations": {"trtrefit.dev/engine-sha256": "probe"}}}
                    }
                },
                dry_run="All",
            )
        except ApiException as exc:
            return bool(exc.status == 403)
        return False

    wait_for(enforced, timeout=30, what="the admission policy enforced")
    try:
        yield
    finally:
        admission.delete_validating_admission_policy_binding(name)
        admission.delete_validating_admission_policy(name)


def test_a_deployment_serves_one_model_and_deleting_the_owner_releases_it(
    kube_api: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_serving(kube_api, namespace)
    create_model(kube_api, namespace, trtmodel())
    wait_job(kube_api, namespace)
    deployment = client.AppsV1Api(kube_api).read_namespaced_deployment("tiny-server", namespace)
    assert deployment.metadata.annotations["trtrefit.dev/model"] == "tiny"

    create_model(kube_api, namespace, trtmodel("second", checkpoint="s3://ckpt/tiny/step-2.safetensors"))
    stalled = wait_reason(kube_api, namespace, "Stalled", "DeploymentClaimed", name="second")
    assert stalled["status"] == "True" and "serves TRTModel tiny" in stalled["message"]
    assert "delete tiny to release it" in stalled["message"]
    assert [
        e for e in wait_events(kube_api, namespace, "DeploymentClaimed", name="second") if e[0] == "Warning"
    ]
    assert len(refit_jobs(kube_api, namespace)) == 1  # the second started nothing

    client.CustomObjectsApi(kube_api).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "tiny"
    )
    job = wait_job(kube_api, namespace, "s3://ckpt/tiny/step-2.safetensors", timeout=60)
    assert job.metadata.labels["trtrefit.dev/model"] == "second"
    wait_for(
        lambda: (
            client.AppsV1Api(kube_api)
            .read_namespaced_deployment("tiny-server", namespace)
            .metadata.annotations.get("trtrefit.dev/model")
            == "second"
        ),
        timeout=30,
        what="the Deployment claimed by the second model",
    )


def test_a_job_a_queue_keeps_suspended_shows_as_queued(
    kube_api: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_serving(kube_api, namespace)
    create_model(kube_api, namespace, trtmodel())
    job = wait_job(kube_api, namespace)
    batch = client.BatchV1Api(kube_api)
    # What Kueue's admission leaves: the Job suspended and labelled with its queue.
    suspend = {"metadata": {"labels": {"kueue.x-k8s.io/queue-name": "gpu-batch"}}, "spec": {"suspend": True}}
    batch.patch_namespaced_job(job.metadata.name, namespace, suspend)
    ready = wait_reason(kube_api, namespace, "Ready", "Queued")
    assert "queued: suspended (spec.suspend) until its queue gpu-batch admits it" in ready["message"]
    status = get_model(kube_api, namespace)["status"]
    assert status["phase"] == "Pending" and condition({"status": status}, "Stalled")["status"] == "False"
    assert next(e for e in wait_events(kube_api, namespace, "Queued") if e[1] == "Queued")[0] == "Normal"

    batch.patch_namespaced_job(job.metadata.name, namespace, {"spec": {"suspend": False}})  # admitted
    wait_reason(kube_api, namespace, "Ready", "Refitting")
    assert not client.BatchV1Api(kube_api).read_namespaced_job(job.metadata.name, namespace).spec.suspend


def _fail_pod(api: client.ApiClient, pod: client.V1Pod, container_reason: str, **pod_fields: str) -> None:
    """Write a Failed pod status whose only container was killed (exit 137) for `container_reason`."""
    started = pod.status.start_time.strftime("%Y-%m-%dT%H:%M:%SZ")
    container = pod.spec.containers[0]
    terminated = {"exitCode": 137, "reason": container_reason, "startedAt": started, "finishedAt": started}
    status = {
        "phase": "Failed",
        **pod_fields,
        "containerStatuses": [
            {
                "name": container.name,
                "image": container.image,
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {"terminated": terminated},
            }
        ],
    }
    client.CoreV1Api(api).patch_namespaced_pod_status(
        pod.metadata.name, pod.metadata.namespace, {"status": status}
    )


def _node_lost(api: client.ApiClient, pod: client.V1Pod) -> None:
    """What the pod GC leaves of a pod whose node is gone: Failed, reason NodeLost, container killed."""
    _fail_pod(api, pod, "Error", reason="NodeLost", message="node kwok-gpu-0 is gone")


def _oom_killed(api: client.ApiClient, pod: client.V1Pod) -> None:
    _fail_pod(api, pod, "OOMKilled")


def test_failures_are_retried_by_what_can_fix_them(
    kube_api: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_serving(kube_api, namespace)
    create_model(kube_api, namespace, trtmodel())
    first = attempt_job(kube_api, namespace, 1)

    # Transient: the node went away. Retried on its own after the backoff (10 s), as attempt 2.
    _node_lost(kube_api, running_pod(kube_api, first))
    reconciling = wait_reason(kube_api, namespace, "Reconciling", "RetryScheduled", timeout=60)
    assert "failed (NodeLost" in reconciling["message"] and "attempt 2 starts at" in reconciling["message"]
    record = get_model(kube_api, namespace)["status"]["lastRefit"]
    assert record["failure"]["kind"] == "Transient" and record["attempts"] == 1
    second = attempt_job(kube_api, namespace, 2, timeout=60)

    # Permanent: out of memory. Waits (Stalled) until spec.refitJob changes; then attempt 3.
    _oom_killed(kube_api, running_pod(kube_api, second))
    stalled = wait_reason(kube_api, namespace, "Stalled", "RefitFailed", timeout=60)
    assert "it runs again on a change to spec.refitJob" in stalled["message"]
    failure = get_model(kube_api, namespace)["status"]["lastRefit"]["failure"]
    assert (failure["kind"], failure["reason"]) == ("Permanent", "OOMKilled")
    assert [j.metadata.name for j in refit_jobs(kube_api, namespace)] == [second.metadata.name]
    patch_spec(
        kube_api, namespace, {"refitJob": {"backoffLimit": 0, "resources": {"limits": {"memory": "8Gi"}}}}
    )
    third = attempt_job(kube_api, namespace, 3)

    # Permanent: verification failed. A spec.refitJob change cannot fix that; the retry annotation can.
    complete(kube_api, third, verification_failed())
    wait_reason(kube_api, namespace, "Stalled", "VerificationFailed", timeout=60)
    client.CustomObjectsApi(kube_api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "tiny", {"metadata": {"annotations": {"trtrefit.dev/retry": "1"}}}
    )
    fourth = attempt_job(kube_api, namespace, 4)
    assert fourth.metadata.annotations["trtrefit.dev/retry-token"] == "1"
    complete(kube_api, fourth)

    def passed_record() -> dict[str, Any] | None:
        record: dict[str, Any] = get_model(kube_api, namespace)["status"]["lastRefit"]
        return record if record["outcome"] == "Passed" else None

    record = wait_for(passed_record, timeout=60, what="the fourth attempt passed")
    assert record is not None and record["attempts"] == 4 and "failure" not in record
    events = wait_events(kube_api, namespace, "RefitStarted", "RefitStarted", "RefitStarted", "RefitStarted")
    assert any("(attempt 4)" in message for _, reason, message in events if reason == "RefitStarted")


def test_a_lost_result_is_said_and_an_outdated_running_job_is_replaced(
    kube_api: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_serving(kube_api, namespace)
    create_model(kube_api, namespace, trtmodel())
    first = attempt_job(kube_api, namespace, 1)

    # Deleted before its result was read: said, then run again after the backoff (not silently at once).
    client.BatchV1Api(kube_api).delete_namespaced_job(
        first.metadata.name, namespace, propagation_policy="Background"
    )
    lost = wait_events(kube_api, namespace, "RefitResultLost")
    (message,) = [m for _, reason, m in lost if reason == "RefitResultLost"]
    assert f"refit Job {first.metadata.name} was deleted before its result was read" in message
    record = get_model(kube_api, namespace)["status"]["lastRefit"]
    assert record["failure"]["reason"] == "ResultLost" and record["failure"]["kind"] == "Transient"
    second = attempt_job(kube_api, namespace, 2, timeout=60)

    # spec.refitJob changed while the Job runs: the Job is replaced by the next attempt.
    patch_spec(
        kube_api,
        namespace,
        {"refitJob": {"backoffLimit": 0, "image": "registry.example/trtrefit-worker:fixed"}},
    )
    third = attempt_job(kube_api, namespace, 3)
    assert third.spec.template.spec.containers[0].image == "registry.example/trtrefit-worker:fixed"
    wait_for(
        lambda: all(j.metadata.uid != second.metadata.uid for j in refit_jobs(kube_api, namespace)),
        timeout=30,
        what="the outdated Job deleted",
    )
    (replaced,) = [
        m for _, r, m in wait_events(kube_api, namespace, "RefitJobReplaced") if r == "RefitJobReplaced"
    ]
    assert replaced.startswith(
        f"Deleted Job {second.metadata.name}: spec.refitJob or the worker image changed"
    )


def test_an_inplace_secret_refused_by_a_quota_is_said(
    kube_api: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_resource_quota(
        namespace, {"metadata": {"name": "no-secrets"}, "spec": {"hard": {"secrets": "0"}}}
    )
    wait_for(
        lambda: core.read_namespaced_resource_quota("no-secrets", namespace).status.hard,
        timeout=30,
        what="the quota counted",
    )
    create_serving(kube_api, namespace)
    create_model(kube_api, namespace, trtmodel(rollout={"strategy": "InPlace"}))
    stalled = wait_reason(kube_api, namespace, "Stalled", "APIRequestDenied")
    assert "create secret tiny-trtrefit-token failed: HTTP 403 Forbidden" in stalled["message"]
    assert "exceeded quota: no-secrets" in stalled["message"]
    wait_events(kube_api, namespace, "APIRequestDenied")
