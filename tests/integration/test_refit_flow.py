"""The flow of DESIGN.md on the real control plane, with the real operator process: a checkpoint bump
becomes one refit Job, a verified result becomes a pod-template patch, the rollout becomes Ready.

kwok runs no containers: the test plays the kubelet for the refit pod, reading the pod spec the operator
created and writing the container's exit code and the worker's result as its termination message."""

from __future__ import annotations

import urllib.request

import pytest
from kubernetes import client

from tests.integration.conftest import WORKER_IMAGE, OperatorProcess
from tests.integration.world import (
    OLD_ENGINE,
    SERVER,
    complete,
    condition,
    create_model,
    create_serving,
    engine_in_template,
    get_model,
    patch_spec,
    rolled_out,
    trtmodel,
    wait_events,
    wait_job,
    wait_phase,
)

pytestmark = pytest.mark.integration

STEP_1 = "s3://ckpt/tiny/step-1.safetensors"
STEP_2 = "s3://ckpt/tiny/step-2.safetensors"


def test_checkpoint_bump_refits_verifies_and_rolls_out(
    kube_api: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_serving(kube_api, namespace)
    model = create_model(kube_api, namespace, trtmodel(checkpoint=STEP_1))

    job = wait_job(kube_api, namespace, STEP_1)
    (owner,) = job.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid, owner.controller) == (
        "TRTModel",
        "tiny",
        model["metadata"]["uid"],
        True,
    )
    (worker,) = job.spec.template.spec.containers
    assert worker.image == WORKER_IMAGE and worker.command == ["trtrefit"] and worker.args[0] == "refit"
    assert worker.resources.limits == {"nvidia.com/gpu": "1"}
    assert worker.termination_message_policy == "FallbackToLogsOnError"
    assert job.spec.ttl_seconds_after_finished == 3600
    refitting = wait_phase(kube_api, namespace, "Refitting")
    assert condition({"status": refitting}, "Reconciling")["status"] == "True"

    pod = complete(kube_api, job)
    ready = wait_phase(kube_api, namespace, "Ready", timeout=120)
    published = ready["lastRefit"]["engine"]["uri"]
    assert published == f"s3://models/tiny/refits/{'a' * 64}.ep"
    assert engine_in_template(kube_api, namespace) == published
    template = client.AppsV1Api(kube_api).read_namespaced_deployment(SERVER, namespace).spec.template
    assert template.metadata.annotations["trtrefit.dev/engine-sha256"] == "a" * 64
    assert ready["serving"]["engine"] == {"uri": published, "sha256": "a" * 64}
    assert ready["serving"]["checkpoint"]["uri"] == STEP_1
    assert ready["history"][0]["engine"]["uri"] == OLD_ENGINE
    last = ready["lastRefit"]
    assert (last["outcome"], last["job"], last["checkpoint"]["uri"]) == ("Passed", job.metadata.name, STEP_1)
    assert last["verification"]["maxAbsError"] == 1e-6 and last["rollout"]["outcome"] == "Complete"
    kinds = {"Ready": "True", "Reconciling": "False", "Stalled": "False", "Verified": "True"}
    kinds["RolledOut"] = "True"
    assert {kind: condition({"status": ready}, kind)["status"] for kind in kinds} == kinds
    assert rolled_out(kube_api, namespace)
    # The pod the test completed is the Job's own, made by kube's Job controller.
    assert [(o.kind, o.name) for o in pod.metadata.owner_references] == [("Job", job.metadata.name)]

    wait_events(kube_api, namespace, "RefitStarted", "RefitPassed", "RolloutStarted", "RolloutComplete")

    metrics = (
        urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=10)
        .read()
        .decode()
    )
    assert 'trtrefit_refits_total{outcome="Passed"} 1.0' in metrics
    assert 'trtrefit_models{phase="Ready"} 1.0' in metrics
    assert 'trtrefit_rollouts_total{outcome="Complete"} 1.0' in metrics

    # The next checkpoint: one more Job, one more rollout, the first engine moves into history.
    patch_spec(kube_api, namespace, {"checkpoint": {"uri": STEP_2}})
    second = wait_job(kube_api, namespace, STEP_2)
    assert second.metadata.name != job.metadata.name
    complete(kube_api, second, digest="b" * 64)
    ready = wait_phase(kube_api, namespace, "Ready", timeout=120)
    assert ready["serving"]["checkpoint"]["uri"] == STEP_2
    assert [h["engine"]["uri"] for h in ready["history"]] == [published, OLD_ENGINE]
    assert get_model(kube_api, namespace)["status"]["observedGeneration"] == 2
