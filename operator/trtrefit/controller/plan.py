"""What to do in this pass: at most one step forward for the desired refit, plus removing superseded Jobs.
Pure: the reconcile pass executes the actions and reports them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from trtrefit.api.status import Digest, LastRefit, ServingStatus
from trtrefit.api.trtmodel import TRTModel
from trtrefit.controller.assess import Assessment, Observed, Step, assess, revert_target
from trtrefit.controller.desired import DesiredRefit, desired_refit
from trtrefit.controller.views import JobState, JobView


@dataclass(frozen=True)
class CreateJob:
    """Start the refit Job of the desired refit; `attempt` counts its Jobs, retries included."""

    attempt: int = 1


@dataclass(frozen=True)
class DeleteJob:
    """Delete a refit Job of a refit that is no longer desired, or one about to be replaced (`replaced`
    says why: a retry, or a spec.refitJob that changed while it ran)."""

    job: JobView
    superseded_by: Digest
    replaced: str = ""


@dataclass(frozen=True)
class RollOut:
    """Point the serving Deployment's pod template at the refitted engine."""

    engine: Digest
    checkpoint: Digest
    key: str


@dataclass(frozen=True)
class Revert:
    """Put the engine that served before back into the pod template; its rollout failed."""

    to: ServingStatus
    failed_key: str


Action = CreateJob | DeleteJob | RollOut | Revert


@dataclass(frozen=True)
class Decision:
    """Where the desired refit stands and what this pass does about it."""

    desired: DesiredRefit
    assessment: Assessment
    actions: list[Action]


def decide(model: TRTModel, observed: Observed, now: datetime) -> Decision:
    """The one pure decision of a Restart pass, from the model and what was observed: the reconcile pass
    calls it before acting (for the actions) and after (for status), and the scenario tests call it too."""
    desired = desired_refit(model.spec)
    assessment = assess(desired, observed, model.status.last_refit, now=now)
    actions = plan(desired, assessment, observed, model.status.serving, model.spec.paused)
    return Decision(desired, assessment, actions)


def plan(
    desired: DesiredRefit,
    assessment: Assessment,
    observed: Observed,
    serving: ServingStatus | None,
    paused: bool,
) -> list[Action]:
    """The actions of this pass; none while paused."""
    if paused:
        return []
    actions: list[Action] = [
        DeleteJob(job, superseded_by=desired.checkpoint)
        for job in observed.jobs
        if job.key != desired.key and job.state is JobState.RUNNING and not job.deleting
    ]
    record, job = assessment.record, observed.refit.job
    attempt = (record.attempts or 1) + 1 if record is not None and record.key == desired.key else 1
    if assessment.step is Step.JOB_OUTDATED and job is not None:
        why = "spec.refitJob or the worker image changed while it ran"
        return [*actions, DeleteJob(job, desired.checkpoint, replaced=why), CreateJob(attempt)]
    if assessment.step is Step.NEEDS_JOB and job is not None and not job.deleting:
        actions.append(DeleteJob(job, desired.checkpoint, replaced="its refit failed and is retried"))
    step_action = _step_action(desired, assessment.step, record, serving, attempt)
    return actions if step_action is None else [*actions, step_action]


def _step_action(
    desired: DesiredRefit, step: Step, record: LastRefit | None, serving: ServingStatus | None, attempt: int
) -> Action | None:
    if step is Step.NEEDS_JOB:
        return CreateJob(attempt)
    if step is Step.NEEDS_ROLLOUT and record is not None and record.engine is not None:
        return RollOut(engine=record.engine, checkpoint=desired.checkpoint, key=desired.key)
    if step is Step.ROLLOUT_FAILED:
        target = revert_target(desired, record, serving)
        return Revert(to=target, failed_key=desired.key) if target is not None else None
    return None
