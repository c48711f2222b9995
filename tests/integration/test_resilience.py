"""Resilience on the real control plane with the real operator process: crashes, quick spec changes,
deleted children, missing Deployments, conflicts and deletion. The Job, the Deployment and the status are the
durable state; nothing relies on the operator's memory."""

from __future__ import annotations

import pytest
from kubernetes import client

from tests.integration.conftest import OperatorProcess
from tests.integration.world import (
    SERVER,
    complete,
    condition,
    create_model,
    create_serving,
    engine_in_template,
    get_model,
    patch_spec,
    refit_jobs,
    trtmodel,
    wait_events,
    wait_job,
    wait_phase,
)
from tests.kubehelpers import wait_for
from trtrefit.api.status import Digest
from trtrefit.api.trtmodel import GROUP, PLURAL, VERSION, TRTModel
from trtrefit.controller.act import execute
from trtrefit.controller.config import OperatorConfig
from trtrefit.controller.desired import desired_refit
from trtrefit.controller.kube import Cluster
from trtrefit.controller.naming import job_name
from trtrefit.controller.plan import RollOut
from trtrefit.controller.reconcile import read_children
from trtrefit.controller.views import DeploymentView

pytestmark = pytest.mark.integration

STEP = "s3://ckpt/tiny/step-{}.safetensors"


def _reasons(api: client.ApiClient, namespace: str, *posted: str) -> list[str]:
    """The TRTModel's event reasons, once the `posted` ones are there."""
    return [reason for _, reason, _ in wait_events(api, namespace, *posted)]


def test_a_restarted_operator_resumes_the_refit_without_a_second_job(
    kube_api: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_serving(kube_api, namespace)
    create_model(kube_api, namespace, trtmodel(checkpoint=STEP.format(1)))
    job = wait_job(kube_api, namespace, STEP.format(1))
    wait_phase(kube_api, namespace, "Refitting")
    wait_events(kube_api, namespace, "RefitStarted")  # posted after the status write, from kopf's queue
    operator.stop(kill=True)  # a crash in the middle of the refit
    complete(kube_api, job)  # the refit ends while no operator runs
    operator.start()
    ready = wait_phase(kube_api, namespace, "Ready", timeout=120)
    (only,) = refit_jobs(kube_api, namespace)
    assert only.metadata.uid == job.metadata.uid
    assert ready["lastRefit"]["job"] == job.metadata.name
    assert _reasons(kube_api, namespace, "RefitStarted").count("RefitStarted") == 1


def test_two_quick_checkpoint_bumps_end_in_one_rollout_of_the_newer(
    kube_api: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_serving(kube_api, namespace)
    apps = client.AppsV1Api(kube_api)
    create_model(kube_api, namespace, trtmodel(checkpoint=STEP.format(1)))
    complete(kube_api, wait_job(kube_api, namespace, STEP.format(1)))
    wait_phase(kube_api, namespace, "Ready", timeout=120)
    generation = apps.read_namespaced_deployment(SERVER, namespace).metadata.generation
    rollouts = _reasons(kube_api, namespace, "RolloutComplete").count("RolloutStarted")

    patch_spec(kube_api, namespace, {"checkpoint": {"uri": STEP.format(2)}})
    patch_spec(kube_api, namespace, {"checkpoint": {"uri": STEP.format(3)}})
    newest = wait_job(kube_api, namespace, STEP.format(3))
    assert [
        j.metadata.name
        for j in refit_jobs(kube_api, namespace)
        if STEP.format(2) in j.spec.template.spec.containers[0].args
    ] == []
    complete(kube_api, newest, digest="c" * 64)
    ready = wait_phase(kube_api, namespace, "Ready", timeout=120)

    assert ready["serving"]["checkpoint"]["uri"] == STEP.format(3)
    assert apps.read_namespaced_deployment(SERVER, namespace).metadata.generation == generation + 1
    after = _reasons(kube_api, namespace, *["RolloutStarted"] * (rollouts + 1))
    assert after.count("RolloutStarted") == rollouts + 1
    assert engine_in_template(kube_api, namespace) == f"s3://models/tiny/refits/{'c' * 64}.ep"


# A Job deleted before its result was read: tests/integration/test_recovery.py (said, then retried).


def test_a_missing_deployment_stalls_with_a_clear_message_and_recovers(
    kube_api: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_model(kube_api, namespace, trtmodel())
    complete(kube_api, wait_job(kube_api, namespace))
    pending = wait_phase(kube_api, namespace, "Pending", timeout=60)

    def stalled() -> dict[str, str] | None:
        found = condition(get_model(kube_api, namespace), "Stalled")
        return found if found.get("status") == "True" else None

    stall = wait_for(stalled, timeout=60, what="Stalled=True")
    assert stall is not None and stall["reason"] == "DeploymentNotFound"
    assert f"Deployment {SERVER} not found" in stall["message"]
    assert pending["lastRefit"]["outcome"] == "Passed"
    assert "DeploymentNotFound" in _reasons(kube_api, namespace, "DeploymentNotFound")

    create_serving(kube_api, namespace)
    ready = wait_phase(kube_api, namespace, "Ready", timeout=120)
    assert ready["serving"]["engine"]["uri"] == ready["lastRefit"]["engine"]["uri"]
    assert condition({"status": ready}, "Stalled")["status"] == "False"


def test_a_job_name_held_by_another_owner_is_waited_for_then_taken(
    kube_api: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    """Create answers 409 AlreadyExists for a Job that is not ours: the operator says so and retries."""
    create_serving(kube_api, namespace)
    body = trtmodel()
    name = job_name(
        "tiny", desired_refit(TRTModel.model_validate({**body, "metadata": {"name": "tiny"}}).spec).key
    )
    batch = client.BatchV1Api(kube_api)
    foreign = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "example/other:1"}]}
            }
        },
    }
    batch.create_namespaced_job(namespace, foreign)
    create_model(kube_api, namespace, body)

    def blocked() -> dict[str, str] | None:
        found = condition(get_model(kube_api, namespace), "Reconciling")
        return found if found.get("reason") == "JobBlocked" else None

    waiting = wait_for(blocked, timeout=60, what="Reconciling=JobBlocked")
    assert waiting is not None and "belongs to another owner" in waiting["message"]
    batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
    ours = wait_job(kube_api, namespace, timeout=90)
    assert ours.metadata.owner_references[0].kind == "TRTModel"
    complete(kube_api, ours)
    wait_phase(kube_api, namespace, "Ready", timeout=120)


def test_a_stale_deployment_patch_gets_409_and_is_retried(
    kube_api: client.ApiClient, namespace: str, trtmodel_crd: str
) -> None:
    """The Deployment patch is conditional on the resourceVersion the pass read: the API server answers 409
    when the Deployment changed since, the pass asks to run again soon, and the next pass succeeds."""
    create_serving(kube_api, namespace)
    created = create_model(kube_api, namespace, trtmodel())
    model = TRTModel.model_validate(created)
    cluster, config = Cluster(kube_api), OperatorConfig(worker_image="w:1")
    desired = desired_refit(model.spec)
    observed = read_children(cluster, model, desired, config)
    assert observed.deployment is not None
    apps = client.AppsV1Api(kube_api)
    apps.patch_namespaced_deployment(SERVER, namespace, {"metadata": {"labels": {"touched": "yes"}}})
    engine = Digest(uri="s3://models/tiny/refits/x.ep", sha256="d" * 64)
    action = RollOut(engine=engine, checkpoint=desired.checkpoint, key=desired.key)

    stale = execute(cluster, model=model, desired=desired, actions=[action], observed=observed, config=config)
    assert stale.done == () and stale.retry_after is not None
    assert engine_in_template(kube_api, namespace) != "s3://models/tiny/refits/x.ep"

    fresh = read_children(cluster, model, desired, config)
    done = execute(cluster, model=model, desired=desired, actions=[action], observed=fresh, config=config)
    assert done.done == (action,) and done.retry_after is None
    assert engine_in_template(kube_api, namespace) == "s3://models/tiny/refits/x.ep"
    view = done.observed.deployment
    assert isinstance(view, DeploymentView)
    assert (view.refit_key, view.engine_sha256) == (desired.key, "d" * 64)


def test_deleting_a_trtmodel_deletes_its_jobs(
    kube_api: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_serving(kube_api, namespace)
    create_model(kube_api, namespace, trtmodel())
    wait_job(kube_api, namespace)
    client.CustomObjectsApi(kube_api).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "tiny"
    )

    def gone() -> bool:
        models = client.CustomObjectsApi(kube_api).list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL
        )
        return not models["items"] and not refit_jobs(kube_api, namespace)

    wait_for(gone, timeout=60, what="the TRTModel and its refit Jobs gone")
