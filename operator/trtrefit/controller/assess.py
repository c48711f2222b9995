"""Where the desired refit stands, as one `Step`, judged from what was observed. The planner turns a step
into actions and the status function turns it into a phase and conditions, so both read the world the
same way."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from trtrefit.api.status import LastRefit, RefitOutcome, RolloutOutcome, ServingStatus
from trtrefit.controller.desired import DesiredRefit
from trtrefit.controller.observe import DeploymentView, JobView, RolloutState
from trtrefit.controller.outcome import RefitObservation, refit_record


class Step(StrEnum):
    NEEDS_JOB = "NeedsJob"
    NO_WORKER_IMAGE = "NoWorkerImage"
    JOB_NOT_ALLOWED = "RefitJobNotAllowed"
    JOB_BLOCKED = "JobBlocked"
    JOB_REFUSED = "JobRefused"
    REFITTING = "Refitting"
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
    refit: RefitObservation
    deployment: DeploymentView | None
    has_worker_image: bool = True
    not_allowed: str = ""  # why the operator's allowlists refuse the refit Job this spec asks for
    job_blocked: str = ""  # why the Job could not be created yet (its name is taken, a quota): retried
    job_refused: str = ""  # why the API server refused the Job (invalid): needs a spec change


@dataclass(frozen=True)
class Assessment:
    step: Step
    record: LastRefit | None  # the desired refit's record (None: not started)


def assess(desired: DesiredRefit, observed: Observed, previous: LastRefit | None) -> Assessment:
    """The step of the desired refit, from the Deployment back to the Job."""
    record = refit_record(desired, observed.refit, previous)
    deployment = observed.deployment
    if deployment is not None and deployment.refit_key == desired.key:
        return Assessment(_rollout_step(deployment.rollout()), record)
    if _reverted(desired, deployment, record):
        return Assessment(Step.REVERTED, record)
    if record is None or record.outcome is RefitOutcome.RUNNING:
        return Assessment(_refit_step(observed), record)
    return Assessment(_result_step(record.outcome, deployment), record)


def _result_step(outcome: RefitOutcome, deployment: DeploymentView | None) -> Step:
    if outcome is RefitOutcome.VERIFICATION_FAILED:
        return Step.VERIFICATION_FAILED
    if outcome is RefitOutcome.FAILED:
        return Step.REFIT_FAILED
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
    if observed.refit.job is not None:
        return Step.REFITTING
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
