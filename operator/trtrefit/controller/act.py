"""Carry out a pass's actions through the API and fold what the API returned back into the observation, so
the status computed afterwards describes the world as it now is."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from trtrefit.api.trtmodel import TRTModel
from trtrefit.controller.assess import Observed
from trtrefit.controller.builders import (
    build_refit_job,
    build_revert_patch,
    build_rollout_patch,
    worker_image,
)
from trtrefit.controller.config import OperatorConfig
from trtrefit.controller.desired import DesiredRefit
from trtrefit.controller.kube import Cluster, ConflictError, InvalidError, KubeError, NotFoundError, Obj
from trtrefit.controller.naming import (
    ATTEMPT_ANNOTATION,
    MODEL_UID_LABEL,
    REFIT_JOB_DIGEST_ANNOTATION,
    RETRY_TOKEN_ANNOTATION,
    job_name,
)
from trtrefit.controller.plan import Action, CreateJob, DeleteJob, Revert, RollOut
from trtrefit.controller.records import RefitEvidence
from trtrefit.controller.views import ApiFailure, DeploymentView, JobView, one_line

CONFLICT_RETRY_SECONDS = 1.0
BLOCKED_RETRY_SECONDS = 10.0
API_ERROR_RETRY_SECONDS = 5.0  # the first retry after an API error; the handler doubles it per attempt


@dataclass(frozen=True)
class Executed:
    """The observation after the actions, the actions that took effect, and when to look again (`backoff`:
    the delay grows with each consecutive retry, for API errors)."""

    observed: Observed
    done: tuple[Action, ...]
    retry_after: float | None = None
    retry_reason: str = ""
    backoff: bool = False


def api_failure(exc: KubeError) -> ApiFailure:
    return ApiFailure(exc.request, exc.status, exc.reason, exc.message)


def execute(
    cluster: Cluster,
    *,
    model: TRTModel,
    desired: DesiredRefit,
    actions: Sequence[Action],
    observed: Observed,
    config: OperatorConfig,
) -> Executed:
    done: list[Action] = []
    retry: float | None = None
    reasons: list[str] = []
    for action in actions:
        try:
            if isinstance(action, CreateJob):
                observed, ok, delay = _create_job(cluster, model, desired, observed, config, action)
            elif isinstance(action, DeleteJob):
                observed, ok, delay = _delete_job(cluster, model, action, observed)
            else:
                observed, ok, delay = _patch_deployment(cluster, model, action, observed)
        except KubeError as exc:  # quota, admission, RBAC, throttling, server errors: status says which
            failure = api_failure(exc)
            observed = dataclasses.replace(observed, api_error=failure)
            return Executed(observed, tuple(done), API_ERROR_RETRY_SECONDS, failure.text(), backoff=True)
        if ok:
            done.append(action)
        if delay is not None:
            retry = delay if retry is None else min(retry, delay)
            reasons.append(
                observed.job_blocked or f"the Deployment changed while {type(action).__name__} ran"
            )
    return Executed(observed, tuple(done), retry, "; ".join(reasons))


def _delete_job(
    cluster: Cluster, model: TRTModel, action: DeleteJob, observed: Observed
) -> tuple[Observed, bool, float | None]:
    cluster.delete_job(model.metadata.namespace or "", action.job.name, action.job.uid)
    jobs = tuple(
        dataclasses.replace(job, deleting=True) if job.uid == action.job.uid else job for job in observed.jobs
    )
    refit = observed.refit
    if refit.job is not None and refit.job.uid == action.job.uid:
        refit = RefitEvidence(job=None, replacing=True)
    return dataclasses.replace(observed, jobs=jobs, refit=refit), True, None


def _create_job(  # noqa: PLR0917
    cluster: Cluster,
    model: TRTModel,
    desired: DesiredRefit,
    observed: Observed,
    config: OperatorConfig,
    action: CreateJob,
) -> tuple[Observed, bool, float | None]:
    namespace, name = model.metadata.namespace or "", job_name(model.metadata.name, desired.key)
    image = worker_image(model, config)
    if image is None:
        return observed, False, None
    manifest = build_refit_job(model, desired, image, config)
    # What the retry policy compares later; on the Job, so a restarted operator reads it back from there.
    stamps = {
        ATTEMPT_ANNOTATION: str(action.attempt),
        REFIT_JOB_DIGEST_ANNOTATION: observed.refit_job_digest,
    }
    if observed.retry_token is not None:
        stamps[RETRY_TOKEN_ANNOTATION] = observed.retry_token
    manifest["metadata"]["annotations"] = {**manifest["metadata"].get("annotations", {}), **stamps}
    try:
        job = cluster.create_job(namespace, manifest)
    except ConflictError:
        existing = cluster.read_job(namespace, name)
        if existing is not None and existing["metadata"].get("deletionTimestamp"):
            waiting = f"Job {name} of an earlier attempt is still being deleted"
            return dataclasses.replace(observed, job_blocked=waiting), False, CONFLICT_RETRY_SECONDS
        if existing is None or not _owned_by(existing, model):
            taken = f"Job {name} exists and belongs to another owner; the refit starts once it is deleted"
            return dataclasses.replace(observed, job_blocked=taken), False, BLOCKED_RETRY_SECONDS
        job = existing  # created by an earlier pass whose list did not show it yet
    except InvalidError as exc:
        return dataclasses.replace(observed, job_refused=one_line(exc.message)), False, None
    view = JobView.of(job)
    refit = RefitEvidence(job=view)
    return dataclasses.replace(observed, jobs=(*observed.jobs, view), refit=refit), True, None


def _owned_by(job: Obj, model: TRTModel) -> bool:
    return bool(job["metadata"].get("labels", {}).get(MODEL_UID_LABEL) == model.metadata.uid)


def _patch_deployment(
    cluster: Cluster, model: TRTModel, action: Action, observed: Observed
) -> tuple[Observed, bool, float | None]:
    deployment = observed.deployment
    if deployment is None:
        return observed, False, None
    if isinstance(action, RollOut):
        patch = build_rollout_patch(model, deployment, action.engine, action.checkpoint, action.key)
    elif isinstance(action, Revert):
        patch = build_revert_patch(model, deployment, action.to, action.failed_key)
    else:
        raise TypeError(f"not a Deployment action: {action!r}")
    serving = model.spec.serving
    try:
        updated = cluster.patch_deployment(model.metadata.namespace or "", deployment.name, patch)
    except ConflictError:  # changed since we read it: read again and decide again, soon
        return observed, False, CONFLICT_RETRY_SECONDS
    except NotFoundError:
        return dataclasses.replace(observed, deployment=None), False, None
    except InvalidError as exc:  # an admission webhook or policy may answer 422 too; it names the field
        refused = dataclasses.replace(
            deployment,
            container=None,
            container_problem=f"the API server refused the patch: {one_line(exc.message)}",
        )
        return dataclasses.replace(observed, deployment=refused), False, None
    return dataclasses.replace(observed, deployment=DeploymentView.of(updated, serving)), True, None
