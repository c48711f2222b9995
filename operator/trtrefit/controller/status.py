"""The one function that computes a TRTModel's status: from the spec, the generation, the previous status,
what was observed (after this pass's actions) and an injected `now`. Nothing else decides what status says.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from trtrefit.api.spec import TRTModelSpec
from trtrefit.api.status import (
    ConditionStatus,
    ConditionType,
    Digest,
    LastRefit,
    Phase,
    RefitOutcome,
    RolloutOutcome,
    RolloutStatus,
    ServingStatus,
    TRTModelStatus,
    history_after,
)
from trtrefit.controller import conditions as c
from trtrefit.controller.assess import Assessment, Observed, Step
from trtrefit.controller.desired import DesiredRefit
from trtrefit.controller.messages import step_message, verified_message
from trtrefit.controller.views import DeploymentView, RolloutState


@dataclass(frozen=True)
class Row:
    """How one step shows in status. `reconciling` and `stalled` are the kstatus conditions' truth."""

    phase: Phase
    reconciling: bool
    stalled: bool
    verified: ConditionStatus
    rolled_out_reason: str


_ROWS: dict[Step, Row] = {
    Step.NEEDS_JOB: Row(Phase.PENDING, True, False, c.U, c.WAITING_FOR_REFIT),
    Step.NO_WORKER_IMAGE: Row(Phase.PENDING, False, True, c.U, c.WAITING_FOR_REFIT),
    Step.JOB_NOT_ALLOWED: Row(Phase.PENDING, False, True, c.U, c.WAITING_FOR_REFIT),
    Step.JOB_BLOCKED: Row(Phase.PENDING, True, False, c.U, c.WAITING_FOR_REFIT),
    Step.JOB_REFUSED: Row(Phase.PENDING, False, True, c.U, c.WAITING_FOR_REFIT),
    Step.API_DENIED: Row(Phase.PENDING, False, True, c.U, c.WAITING_FOR_REFIT),
    Step.API_FAILED: Row(Phase.PENDING, True, False, c.U, c.WAITING_FOR_REFIT),
    Step.QUEUED: Row(Phase.PENDING, True, False, c.U, c.WAITING_FOR_REFIT),
    Step.JOB_OUTDATED: Row(Phase.REFITTING, True, False, c.U, c.WAITING_FOR_REFIT),
    Step.REFITTING: Row(Phase.REFITTING, True, False, c.U, c.WAITING_FOR_REFIT),
    Step.RETRY_SCHEDULED: Row(Phase.REFITTING, True, False, c.U, c.WAITING_FOR_REFIT),
    Step.VERIFICATION_FAILED: Row(Phase.FAILED, False, True, c.F, c.NOT_VERIFIED),
    Step.REFIT_FAILED: Row(Phase.FAILED, False, True, c.U, c.NOT_VERIFIED),
    Step.NO_DEPLOYMENT: Row(Phase.PENDING, False, True, c.T, Step.NO_DEPLOYMENT.value),
    Step.NO_CONTAINER: Row(Phase.PENDING, False, True, c.T, Step.NO_CONTAINER.value),
    Step.NEEDS_ROLLOUT: Row(Phase.PENDING, True, False, c.T, c.ROLLOUT_PENDING),
    Step.ROLLING_OUT: Row(Phase.ROLLING_OUT, True, False, c.T, Step.ROLLING_OUT.value),
    Step.ROLLOUT_FAILED: Row(Phase.FAILED, False, True, c.T, Step.ROLLOUT_FAILED.value),
    Step.REVERTED: Row(Phase.FAILED, False, True, c.T, Step.REVERTED.value),
    Step.READY: Row(Phase.READY, False, False, c.T, c.ROLLOUT_COMPLETE),
}


def compute_status(
    spec: TRTModelSpec,
    *,
    generation: int,
    previous: TRTModelStatus,
    desired: DesiredRefit,
    assessment: Assessment,
    observed: Observed,
    now: datetime,
) -> TRTModelStatus:
    """The status after this pass. Equal inputs give an equal status, so an idle pass writes nothing."""
    step = assessment.step
    deployment = observed.deployment
    last_refit = _last_refit(assessment, deployment, previous.last_refit, now)
    serving = _serving(deployment, previous.serving, now)
    message = step_message(
        step, spec=spec, desired=desired, record=last_refit, observed=observed, serving=previous.serving
    )
    observations = _conditions(step, spec.paused, message, last_refit, spec)
    return TRTModelStatus(
        observed_generation=generation,
        phase=_ROWS[step].phase,
        conditions=c.merge_conditions(previous.conditions, observations, generation, now),
        serving=serving,
        last_refit=last_refit,
        history=history_after(previous.history, previous.serving, serving, now),
    )


def _conditions(
    step: Step, paused: bool, message: str, record: LastRefit | None, spec: TRTModelSpec
) -> list[c.Observation]:
    row = _ROWS[step]
    if step in (Step.API_DENIED, Step.API_FAILED) and record is not None:  # the refit's verdict stands
        verdict = {RefitOutcome.PASSED: c.T, RefitOutcome.VERIFICATION_FAILED: c.F}
        row = dataclasses.replace(row, verified=verdict.get(record.outcome, c.U))
    ready = step is Step.READY
    reconciling = c.Observation(
        ConditionType.RECONCILING,
        c.T if row.reconciling else c.F,
        step.value,
        message if row.reconciling else "",
    )
    if paused and row.reconciling:
        reconciling = c.Observation(
            ConditionType.RECONCILING, c.F, c.PAUSED, f"spec.paused is true; {message}"
        )
    verified_reason = {c.T: c.VERIFICATION_PASSED, c.F: Step.VERIFICATION_FAILED.value, c.U: step.value}
    if row.verified is c.T and (record is None or record.verification is None):
        verified_reason[c.T] = c.SERVED
    return [
        c.Observation(ConditionType.READY, c.T if ready else c.F, step.value, message),
        reconciling,
        c.Observation(
            ConditionType.STALLED,
            c.T if row.stalled else c.F,
            step.value if row.stalled else c.NOT_STALLED,
            message if row.stalled else "",
        ),
        c.Observation(
            ConditionType.VERIFIED,
            row.verified,
            verified_reason[row.verified],
            verified_message(record, spec) if row.verified is not c.U else message,
        ),
        c.Observation(ConditionType.ROLLED_OUT, c.T if ready else c.F, row.rolled_out_reason, message),
    ]


def _last_refit(
    assessment: Assessment,
    deployment: DeploymentView | None,
    previous: LastRefit | None,
    now: datetime,
) -> LastRefit | None:
    record = assessment.record
    if record is None:
        return previous
    earlier = record.rollout if record.rollout is not None else None
    outcome = _rollout_outcome(assessment.step)
    if outcome is None or deployment is None:
        return record
    rollout = earlier or RolloutStatus(deployment=deployment.name, outcome=outcome, started_at=now)
    if rollout.outcome is not outcome:
        done = outcome is not RolloutOutcome.ROLLING_OUT
        finished = now if done else None
        seconds = (now - rollout.started_at).total_seconds() if done else None
        rollout = rollout.model_copy(update={"outcome": outcome, "finished_at": finished, "seconds": seconds})
    message = {
        RolloutOutcome.ROLLING_OUT: deployment.rollout_message(),
        RolloutOutcome.FAILED: deployment.rollout_message(),
        RolloutOutcome.COMPLETE: deployment.rollout_message(),
        RolloutOutcome.REVERTED: f"reverted Deployment {deployment.name} to engine {deployment.engine_uri}",
    }[outcome]
    return record.model_copy(update={"rollout": rollout.model_copy(update={"message": message})})


def _rollout_outcome(step: Step) -> RolloutOutcome | None:
    return {
        Step.ROLLING_OUT: RolloutOutcome.ROLLING_OUT,
        Step.READY: RolloutOutcome.COMPLETE,
        Step.ROLLOUT_FAILED: RolloutOutcome.FAILED,
        Step.REVERTED: RolloutOutcome.REVERTED,
    }.get(step)


def _serving(
    deployment: DeploymentView | None, previous: ServingStatus | None, now: datetime
) -> ServingStatus | None:
    """What the Deployment serves once its rollout is complete; until then, what served before."""
    if deployment is None or deployment.rollout() is not RolloutState.COMPLETE or not deployment.engine_uri:
        return previous
    engine = Digest(uri=deployment.engine_uri, sha256=deployment.engine_sha256)
    checkpoint = (
        Digest(uri=deployment.checkpoint_uri, sha256=deployment.checkpoint_sha256)
        if deployment.checkpoint_uri
        else None
    )
    same = previous is not None and previous.engine == engine
    since = previous.since if same and previous is not None else now
    return ServingStatus(engine=engine, checkpoint=checkpoint, refit_key=deployment.refit_key, since=since)


def invalid_spec_status(
    raw: dict[str, object], generation: int, message: str, now: datetime
) -> TRTModelStatus:
    """The status of a TRTModel whose stored spec does not parse: Stalled, the rest kept as it was."""
    try:
        previous = TRTModelStatus.model_validate(raw)
    except ValidationError:
        previous = TRTModelStatus()
    observations = [
        c.Observation(ConditionType.READY, c.F, c.INVALID_SPEC, message),
        c.Observation(ConditionType.RECONCILING, c.F, c.INVALID_SPEC),
        c.Observation(ConditionType.STALLED, c.T, c.INVALID_SPEC, message),
        c.Observation(ConditionType.VERIFIED, c.U, c.INVALID_SPEC),
        c.Observation(ConditionType.ROLLED_OUT, c.F, c.INVALID_SPEC),
    ]
    return previous.model_copy(
        update={
            "observed_generation": generation,
            "phase": Phase.FAILED,
            "conditions": c.merge_conditions(previous.conditions, observations, generation, now),
        }
    )


def blocked_status(
    previous: TRTModelStatus,
    generation: int,
    *,
    reason: str,
    message: str,
    stalled: bool,
    now: datetime,
    phase: Phase | None = None,
) -> TRTModelStatus:
    """The status of a pass that could not get to its work (the Deployment serves another TRTModel, an API
    request failed): Stalled when a human must act, else Reconciling; what was recorded before is kept."""
    verified = previous.condition(ConditionType.VERIFIED)
    observations = [
        c.Observation(ConditionType.READY, c.F, reason, message),
        c.Observation(ConditionType.RECONCILING, c.F if stalled else c.T, reason, "" if stalled else message),
        c.Observation(
            ConditionType.STALLED,
            c.T if stalled else c.F,
            reason if stalled else c.NOT_STALLED,
            message if stalled else "",
        ),
        c.Observation(
            ConditionType.VERIFIED,
            verified.status if verified is not None else c.U,
            verified.reason if verified is not None else reason,
            verified.message if verified is not None else "",
        ),
        c.Observation(ConditionType.ROLLED_OUT, c.F, reason, message),
    ]
    return previous.model_copy(
        update={
            "observed_generation": generation,
            "phase": phase or previous.phase or Phase.PENDING,
            "conditions": c.merge_conditions(previous.conditions, observations, generation, now),
        }
    )
