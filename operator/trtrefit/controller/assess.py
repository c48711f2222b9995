"""Where the desired refit stands, as one `Step`, judged from what was observed. The planner turns a step
into actions and the status function turns it into a phase and conditions, so both read the world the
same way."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from trtrefit.api.status import (
    FailureKind,
    LastRefit,
    RefitFailure,
    RefitOutcome,
    RolloutOutcome,
    ServingStatus,
)
from trtrefit.controller.desired import DesiredRefit
from trtrefit.controller.records import RefitEvidence, refit_record
from trtrefit.controller.views import ApiFailure, DeploymentView, JobView, RolloutState


class Step(StrEnum):
    NEEDS_JOB = "NeedsJob"
    NO_WORKER_IMAGE = "NoWorkerImage"
    JOB_NOT_ALLOWED = "RefitJobNotAllowed"
    JOB_BLOCKED = "JobBlocked"
    JOB_REFUSED = "JobRefused"
    API_DENIED = "APIRequestDenied"  # 401/403: RBAC, a ResourceQuota, an admission policy
    API_FAILED = "APIRequestFailed"  # any other error status: retried with backoff
    QUEUED = "Queued"  # the Job is suspended until a queue (Kueue) admits it
    JOB_OUTDATED = "RefitJobChanged"  # a running Job built from an older spec.refitJob: replaced
    REFITTING = "Refitting"
    RETRY_SCHEDULED = "RetryScheduled"  # a transient failure, retried after a backoff
    VERIFICATION_FAILED = "VerificationFailed"
    REFIT_FAILED = "RefitFailed"
    NO_DEPLOYMENT = "DeploymentNotFound"
    NO_CONTAINER = "ContainerNotFound"
    NEEDS_ROLLOUT = "NeedsRollout"
    ROLLING_OUT = "RollingOut"
    ROLLOUT_FAILED = "RolloutFailed"
    REVERTED = "RolloutReverted"
    READY = "Ready"


@dataclass(frozen=True)
class Observed:
    """Everything one pass knows about the world besides the TRTModel itself."""

    jobs: tuple[JobView, ...]
    refit: RefitEvidence
    deployment: DeploymentView | None
    has_worker_image: bool = True
    not_allowed: str = ""  # why the operator's allowlists refuse the refit Job this spec asks for
    job_blocked: str = ""  # why the Job could not be created yet (its name is taken, a quota): retried
    job_refused: str = ""  # why the API server refused the Job (invalid): needs a spec change
    api_error: ApiFailure | None = None  # an action of this pass the API server answered with an error
    refit_job_digest: str = ""  # of the spec's refitJob and worker image (desired.refit_job_digest)
    retry_token: str | None = None  # the model's trtrefit.dev/retry annotation now


@dataclass(frozen=True)
class Assessment:
    step: Step
    record: LastRefit | None  # the desired refit's record (None: not started)


def assess(
    desired: DesiredRefit, observed: Observed, previous: LastRefit | None, *, now: datetime
) -> Assessment:
    """The step of the desired refit, from the Deployment back to the Job."""
    record = refit_record(desired, observed.refit, previous, now)
    deployment = observed.deployment
    if observed.api_error is not None:
        return Assessment(Step.API_DENIED if observed.api_error.needs_human else Step.API_FAILED, record)
    if deployment is not None and deployment.refit_key == desired.key:
        return Assessment(_rollout_step(deployment.rollout()), record)
    if _reverted(desired, deployment, record):
        return Assessment(Step.REVERTED, record)
    if record is None or record.outcome is RefitOutcome.RUNNING:
        return Assessment(_refit_step(observed), record)
    if record.outcome is not RefitOutcome.PASSED:
        return Assessment(_failed_step(record, observed, now), record)
    return Assessment(_result_step(deployment), record)


def retry_now(record: LastRefit, observed: Observed, now: datetime) -> bool | None:
    """Whether a failed refit runs again now (True), after its backoff (None) or not yet (False): a transient
    failure once its retryAt passed; any failure when the retry annotation has a new value; a failure of
    the pod when spec.refitJob (or the worker image) changed since its Job was built."""
    failure = record.failure or RefitFailure(kind=FailureKind.PERMANENT, reason="Unknown")
    if observed.retry_token is not None and observed.retry_token != record.retry_token:
        return True
    if failure.kind is FailureKind.TRANSIENT:
        return True if failure.retry_at is None or failure.retry_at <= now else None
    fixable_by_job = failure.reason not in ("VerificationFailed", "ResultRefused")
    changed = record.refit_job_digest is not None and record.refit_job_digest != observed.refit_job_digest
    return fixable_by_job and changed and observed.refit_job_digest != ""


def _failed_step(record: LastRefit, observed: Observed, now: datetime) -> Step:
    due = retry_now(record, observed, now)
    if due is None:
        return Step.RETRY_SCHEDULED
    if due:  # as if no Job were there: the failed one is deleted before the next starts
        return _refit_step(dataclasses.replace(observed, refit=RefitEvidence(job=None)))
    return (
        Step.VERIFICATION_FAILED if record.outcome is RefitOutcome.VERIFICATION_FAILED else Step.REFIT_FAILED
    )


def _result_step(deployment: DeploymentView | None) -> Step:
    if deployment is None:
        return Step.NO_DEPLOYMENT
    return Step.NO_CONTAINER if deployment.container is None else Step.NEEDS_ROLLOUT


def _rollout_step(state: RolloutState) -> Step:
    return {
        RolloutState.COMPLETE: Step.READY,
        RolloutState.FAILED: Step.ROLLOUT_FAILED,
        RolloutState.PROGRESSING: Step.ROLLING_OUT,
    }[state]


def _reverted(desired: DesiredRefit, deployment: DeploymentView | None, record: LastRefit | None) -> bool:
    if deployment is not None and deployment.reverted_key == desired.key:
        return True
    rollout = record.rollout if record is not None else None
    return rollout is not None and rollout.outcome in (RolloutOutcome.REVERTED, RolloutOutcome.FAILED)


def _refit_step(observed: Observed) -> Step:
    job = observed.refit.job
    if job is not None:
        if (
            job.refit_job_digest
            and observed.refit_job_digest
            and job.refit_job_digest != observed.refit_job_digest
        ):
            return Step.JOB_OUTDATED
        return Step.QUEUED if job.suspended else Step.REFITTING
    if observed.job_refused:
        return Step.JOB_REFUSED
    if observed.job_blocked:
        return Step.JOB_BLOCKED
    if not observed.has_worker_image:
        return Step.NO_WORKER_IMAGE
    return Step.JOB_NOT_ALLOWED if observed.not_allowed else Step.NEEDS_JOB


def revert_target(
    desired: DesiredRefit, record: LastRefit | None, serving: ServingStatus | None
) -> ServingStatus | None:
    """What to put back when the rollout of the desired refit fails: the engine that served before it, but
    only when this operator started that rollout (not when an old rollout stalls on scaling later)."""
    rollout = record.rollout if record is not None else None
    started_here = rollout is not None and rollout.outcome is RolloutOutcome.ROLLING_OUT
    if not started_here or serving is None or serving.refit_key == desired.key:
        return None
    return serving
