"""One reconcile pass for one TRTModel: read the model and its children, plan, act, compute status, write it
once (only when it changed) and say what happened. Level-based: every pass starts from the API's state,
so a restarted operator, a lost event or a repeated pass all converge to the same result."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from trtrefit.api.redact import redact_text
from trtrefit.api.spec import RolloutStrategy
from trtrefit.api.status import ConditionType, Phase, TRTModelStatus
from trtrefit.api.trtmodel import TRTModel
from trtrefit.controller.act import API_ERROR_RETRY_SECONDS, api_failure, execute
from trtrefit.controller.assess import Observed, Step
from trtrefit.controller.builders import worker_image
from trtrefit.controller.config import OperatorConfig
from trtrefit.controller.desired import DesiredRefit, artifact_uris, desired_refit, refit_job_digest
from trtrefit.controller.events import WARNING, Event, Finished, action_events, status_events
from trtrefit.controller.inplace import reconcile_in_place
from trtrefit.controller.kube import Cluster, ConflictError, KubeError, NotFoundError, Obj, merge_patch
from trtrefit.controller.naming import MODEL_ANNOTATION, MODEL_UID_LABEL, REFIT_KEY_LABEL, RETRY_ANNOTATION
from trtrefit.controller.plan import decide
from trtrefit.controller.pods import PodClient
from trtrefit.controller.policy import refit_job_violation
from trtrefit.controller.records import RefitEvidence, desired_job, needs_pods
from trtrefit.controller.status import blocked_status, compute_status, invalid_spec_status
from trtrefit.controller.views import DeploymentView, JobState, JobView, one_line, pod_progress, pod_report

DEPLOYMENT_CLAIMED = "DeploymentClaimed"
CLAIM_RETRY_SECONDS = 30.0  # a safety net: deleting the owner releases the claim, and that triggers a pass


class InvalidSpecError(Exception):
    """The stored TRTModel does not parse; it needs a human (or a matching CRD), not a retry."""


@dataclass(frozen=True)
class PassResult:
    """What a pass did, for the handler: Events to post (after the status write), metric samples, the phase,
    and a delay after which to run again when something is expected to clear up soon."""

    reference: dict[str, Any] | None = None
    phase: Phase | None = None
    events: list[Event] = field(default_factory=list)
    finished: list[Finished] = field(default_factory=list)
    retry_after: float | None = None
    retry_reason: str = ""
    backoff: bool = False  # the delay is the first of a series that grows with each retry (API errors)
    wrote_status: bool = False
    stalled: str | None = None  # the Stalled condition's reason when it is True: a human must act


def reference(body: Obj) -> dict[str, Any]:
    """The object reference Events point at."""
    meta = body["metadata"]
    return {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
    }


def read_children(
    cluster: Cluster, model: TRTModel, desired: DesiredRefit, config: OperatorConfig
) -> Observed:
    """Read the refit Jobs of the model, the desired Job's pods when needed, and the serving Deployment."""
    namespace, uid = model.metadata.namespace or "", model.metadata.uid or ""
    jobs = tuple(JobView.of(job) for job in cluster.list_jobs(namespace, uid))
    job = desired_job(jobs, desired.key)
    replacing = any(j.key == desired.key and j.deleting for j in jobs)
    refit = RefitEvidence(job=job, replacing=replacing)
    if job is not None and needs_pods(job, model.status.last_refit, desired.key):
        pods = cluster.list_pods(namespace, f"{MODEL_UID_LABEL}={uid},{REFIT_KEY_LABEL}={desired.key}")
        if job.state is JobState.RUNNING:
            refit = RefitEvidence(job=job, progress=pod_progress(pods, job.uid))
        else:
            refit = RefitEvidence(job=job, report=pod_report(pods, job.uid))
    serving = model.spec.serving
    found = cluster.get_deployment(namespace, serving.deployment_name)
    deployment = DeploymentView.of(found, serving) if found is not None else None
    image = worker_image(model, config)
    not_allowed = refit_job_violation(model, image, config)
    return Observed(
        jobs,
        refit,
        deployment,
        has_worker_image=image is not None,
        not_allowed=not_allowed,
        refit_job_digest=refit_job_digest(model.spec, image),
        retry_token=model.metadata.annotations.get(RETRY_ANNOTATION),
    )


def reconcile(
    cluster: Cluster,
    config: OperatorConfig,
    namespace: str,
    name: str,
    now: datetime,
    *,
    pods: PodClient | None = None,
    clock: Callable[[], datetime] | None = None,
) -> PassResult:
    """Run one pass. Raises InvalidSpecError when the object does not parse (after saying so in status).

    `pods` talks to InPlace serving pods; `clock` stamps what an InPlace pass does after `now`."""
    body = cluster.get_model(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return PassResult()
    generation = int(body["metadata"].get("generation", 0))
    try:
        model = TRTModel.model_validate(body)
    except ValidationError as exc:
        message = one_line(f"spec does not parse: {exc}")
        status = invalid_spec_status(body.get("status") or {}, generation, message, now)
        _write_status(cluster, body, status)
        raise InvalidSpecError(message) from exc
    try:
        owner = claim_deployment(cluster, model)
        if owner:
            return _claimed(cluster, model, body, owner, now)
        if model.spec.rollout.strategy is RolloutStrategy.IN_PLACE:
            return _in_place(cluster, pods or PodClient(), model, body, clock=clock or (lambda: now))
        return _restart(cluster, config, model, body, now)
    except KubeError as exc:  # a read or write outside the actions: say which, then retry with backoff
        return _api_error(cluster, model, body, exc, now)


def _restart(
    cluster: Cluster, config: OperatorConfig, model: TRTModel, body: Obj, now: datetime
) -> PassResult:
    name = model.metadata.name
    generation = int(body["metadata"].get("generation", 0))
    desired = desired_refit(model.spec)
    observed = read_children(cluster, model, desired, config)
    decision = decide(model, observed, now)
    executed = execute(
        cluster, model=model, desired=desired, actions=decision.actions, observed=observed, config=config
    )
    assessment = decide(model, executed.observed, now).assessment
    retry_after, retry_reason = executed.retry_after, executed.retry_reason
    failure = assessment.record.failure if assessment.record is not None else None
    if assessment.step is Step.RETRY_SCHEDULED and failure is not None and failure.retry_at is not None:
        wait = max(1.0, (failure.retry_at - now).total_seconds())
        if retry_after is None or wait < retry_after:
            retry_after, retry_reason = wait, f"a transient failure ({failure.reason}) is retried"
    status = compute_status(
        model.spec,
        generation=generation,
        previous=model.status,
        desired=desired,
        assessment=assessment,
        observed=executed.observed,
        now=now,
    )
    hidden = artifact_uris(model.spec)
    wrote = _write_status(cluster, body, status, hidden)
    events = action_events(executed.done, name, model.spec, desired.key)
    transitions, finished = status_events(model.status, status, model.spec)
    return PassResult(
        reference=reference(body),
        phase=status.phase,
        stalled=stalled_reason(status),
        events=_redacted(events + transitions, hidden),
        finished=finished,
        retry_after=retry_after,
        retry_reason=retry_reason,
        backoff=executed.backoff,
        wrote_status=wrote,
    )


def claim_deployment(cluster: Cluster, model: TRTModel) -> str:
    """The other TRTModel the serving Deployment serves, or "" after making sure it serves this one: its
    trtrefit.dev/model annotation is the claim. A claim whose model is gone or names another Deployment
    is stale and taken over; the write is conditional, so of two models claiming at once one wins."""
    namespace, name = model.metadata.namespace or "", model.metadata.name
    deployment_name = model.spec.serving.deployment_name
    for _ in range(2):
        found = cluster.get_deployment(namespace, deployment_name)
        if found is None:
            return ""
        meta = found["metadata"]
        owner = (meta.get("annotations") or {}).get(MODEL_ANNOTATION)
        if owner == name:
            return ""
        if owner and _claims(cluster.get_model(namespace, owner), deployment_name):
            return str(owner)
        claim = {
            "metadata": {
                "resourceVersion": meta.get("resourceVersion"),
                "annotations": {MODEL_ANNOTATION: name},
            }
        }
        try:
            cluster.patch_deployment(namespace, deployment_name, claim)
            return ""
        except ConflictError:  # changed since read (perhaps claimed by another model): read again
            continue
        except NotFoundError:
            return ""
    return ""


def _claims(owner: Obj | None, deployment_name: str) -> bool:
    if owner is None or owner["metadata"].get("deletionTimestamp"):
        return False
    serving = (owner.get("spec") or {}).get("serving") or {}
    return bool(serving.get("deploymentName") == deployment_name)


def release_deployment(cluster: Cluster, namespace: str, name: str, deployment_name: str) -> bool:
    """Drop this model's claim on its Deployment (it is being deleted), so a model waiting for it proceeds."""
    found = cluster.get_deployment(namespace, deployment_name)
    if found is None or (found["metadata"].get("annotations") or {}).get(MODEL_ANNOTATION) != name:
        return False
    release = {
        "metadata": {
            "resourceVersion": found["metadata"].get("resourceVersion"),
            "annotations": {MODEL_ANNOTATION: None},
        }
    }
    try:
        cluster.patch_deployment(namespace, deployment_name, release)
    except (ConflictError, NotFoundError):
        return False
    return True


def _claimed(cluster: Cluster, model: TRTModel, body: Obj, owner: str, now: datetime) -> PassResult:
    deployment = model.spec.serving.deployment_name
    message = (
        f"Deployment {deployment} serves TRTModel {owner} (its {MODEL_ANNOTATION} annotation); a Deployment "
        f"serves one TRTModel: name another Deployment, or delete {owner} to release it"
    )
    return _blocked(
        cluster,
        model,
        body,
        DEPLOYMENT_CLAIMED,
        message,
        stalled=True,
        now=now,
        retry_after=CLAIM_RETRY_SECONDS,
        backoff=False,
        phase=Phase.PENDING,  # it serves nothing of this model's
    )


def stalled_reason(status: TRTModelStatus) -> str | None:
    stalled = status.condition(ConditionType.STALLED)
    return stalled.reason if stalled is not None and stalled.status == "True" else None


def _api_error(cluster: Cluster, model: TRTModel, body: Obj, exc: KubeError, now: datetime) -> PassResult:
    failure = api_failure(exc)
    step = Step.API_DENIED if failure.needs_human else Step.API_FAILED
    why = "a human must act (RBAC, a ResourceQuota or an admission policy); " if failure.needs_human else ""
    message = f"{failure.text()}; {why}retried with backoff"
    return _blocked(
        cluster,
        model,
        body,
        step.value,
        message,
        stalled=failure.needs_human,
        now=now,
        retry_after=API_ERROR_RETRY_SECONDS,
        backoff=True,
    )


def _blocked(
    cluster: Cluster,
    model: TRTModel,
    body: Obj,
    reason: str,
    message: str,
    *,
    stalled: bool,
    now: datetime,
    retry_after: float,
    backoff: bool,
    phase: Phase | None = None,
) -> PassResult:
    generation = int(body["metadata"].get("generation", 0))
    status = blocked_status(
        model.status, generation, reason=reason, message=message, stalled=stalled, now=now, phase=phase
    )
    hidden = artifact_uris(model.spec)
    wrote = _write_status(cluster, body, status, hidden)
    before = model.status.condition(ConditionType.READY)
    changed = before is None or (before.reason, before.message) != (reason, message)
    events = [Event(WARNING, reason, message)] if changed else []
    return PassResult(
        reference=reference(body),
        phase=status.phase,
        stalled=stalled_reason(status),
        events=_redacted(events, hidden),
        retry_after=retry_after,
        retry_reason=message,
        backoff=backoff,
        wrote_status=wrote,
    )


def _in_place(
    cluster: Cluster, pods: PodClient, model: TRTModel, body: Obj, *, clock: Callable[[], datetime]
) -> PassResult:
    generation = int(body["metadata"].get("generation", 0))
    done = reconcile_in_place(cluster, pods, model, generation=generation, clock=clock)
    hidden = artifact_uris(model.spec)
    wrote = _write_status(cluster, body, done.status, hidden)
    return PassResult(
        reference=reference(body),
        phase=done.status.phase,
        stalled=stalled_reason(done.status),
        events=_redacted(done.events, hidden),
        finished=done.finished,
        retry_after=done.retry_after,
        retry_reason=done.retry_reason,
        wrote_status=wrote,
    )


def _write_status(cluster: Cluster, body: Obj, status: TRTModelStatus, hidden: Sequence[str] = ()) -> bool:
    # The last gate before the API: no artifact URI reaches status with its query string or userinfo.
    new = json.loads(redact_text(json.dumps(status.wire()), hidden))
    patch = merge_patch(body.get("status") or {}, new)
    if not patch:
        return False
    meta = body["metadata"]
    cluster.patch_model_status(meta["namespace"], meta["name"], patch)
    return True


def _redacted(events: Sequence[Event], hidden: Sequence[str]) -> list[Event]:
    return [dataclasses.replace(e, message=redact_text(e.message, hidden)) for e in events]


def delete_refit_jobs(cluster: Cluster, namespace: str, model_uid: str) -> list[str]:
    """Delete every refit Job of a model (and, in the background, their pods); the names deleted."""
    jobs = [JobView.of(job) for job in cluster.list_jobs(namespace, model_uid)]
    for job in jobs:
        cluster.delete_job(namespace, job.name, job.uid)
    return [job.name for job in jobs]
