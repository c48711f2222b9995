"""The status of an InPlace TRTModel, from the spec, the generation, the previous status, the pass's decision,
what the pods reported and an injected `now`. Pure, like `status.compute_status` for Restart: equal inputs
give an equal status, so an idle pass writes nothing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from trtrefit.api.result import Outcome, RefitResult
from trtrefit.api.spec import TRTModelSpec
from trtrefit.api.status import (
    ConditionType,
    Digest,
    LastRefit,
    Phase,
    PodCounts,
    RefitOutcome,
    RolloutOutcome,
    RolloutStatus,
    ServingStatus,
    TRTModelStatus,
    history_after,
)
from trtrefit.controller import conditions as c
from trtrefit.controller.desired import DesiredRefit
from trtrefit.controller.inplace_messages import stage_message
from trtrefit.controller.inplace_plan import Decision, InPlaceObserved, Stage, failed_at_pod, in_place_record
from trtrefit.controller.messages import numbers
from trtrefit.controller.records import REFIT_OUTCOMES, summary_of
from trtrefit.controller.serving_pods import Answer, RefitAnswer
from trtrefit.controller.views import one_line


@dataclass(frozen=True)
class Row:
    phase: Phase
    reconciling: bool
    stalled: bool


_ROWS: dict[Stage, Row] = {
    Stage.NO_DEPLOYMENT: Row(Phase.PENDING, False, True),
    Stage.NO_TOKEN: Row(Phase.PENDING, False, True),
    Stage.CONFIG_BLOCKED: Row(Phase.PENDING, True, False),
    Stage.WAITING_FOR_PODS: Row(Phase.PENDING, True, False),
    Stage.CANARY: Row(Phase.REFITTING, True, False),
    Stage.VERIFICATION_FAILED: Row(Phase.FAILED, False, True),
    Stage.REFIT_FAILED: Row(Phase.FAILED, False, True),
    Stage.UNAUTHORIZED: Row(Phase.PENDING, False, True),
    Stage.ROLLING_OUT: Row(Phase.ROLLING_OUT, True, False),
    Stage.POD_FAILED: Row(Phase.FAILED, False, True),
    Stage.READY: Row(Phase.READY, False, False),
}


def record_from_result(
    desired: DesiredRefit, pod: str, result: RefitResult, started: datetime | None, seconds: float | None
) -> LastRefit:
    """A LastRefit from a pod's RefitResult (a canary's answer, or what a pod reports it did at start)."""
    verification = result.verification
    finished = started + timedelta(seconds=round(seconds)) if started and seconds is not None else None
    checkpoint = desired.checkpoint
    if result.checkpoint is not None and result.checkpoint.uri == checkpoint.uri:
        checkpoint = Digest(uri=checkpoint.uri, sha256=result.checkpoint.sha256)
    return LastRefit(
        key=desired.key,
        canary=pod,
        checkpoint=checkpoint,
        outcome=REFIT_OUTCOMES[result.outcome],
        started_at=started,
        finished_at=finished,
        seconds=round(seconds, 3) if seconds is not None else None,
        verification=summary_of(verification),
        backend=result.backend,
        path=result.path.value if result.path else None,
        message=one_line(result.message),
        retry_token=result.attempt,
    )


def canary_record(desired: DesiredRefit, answer: RefitAnswer, started: datetime) -> LastRefit | None:
    """The record of a canary's answer; None when it is no verdict (no answer, superseded, 401)."""
    if answer.result is None or answer.answer not in (Answer.PASSED, Answer.FAILED):
        return None
    return record_from_result(desired, answer.pod, answer.result, started, answer.seconds)


def current_record(
    desired: DesiredRefit, observed: InPlaceObserved, previous: LastRefit | None, attempt: str | None
) -> LastRefit | None:
    """The InPlace record of the desired refit: kept in status once made, else read back from the pods (a
    pod that rolled it back, or one that serves it: e.g. after an operator restart lost the status write)."""
    recorded = in_place_record(previous, desired.key, attempt)
    if recorded is not None:
        return recorded
    failed = failed_at_pod(observed, desired.key, attempt)
    if failed is not None:
        return record_from_result(desired, failed[0], failed[1], None, None)
    for seen in observed.current(desired.key):
        last = seen.state.last_refit if seen.state is not None else None
        if last is not None and last.key == desired.key and last.outcome is Outcome.PASSED:
            return record_from_result(desired, seen.pod.name, last, None, None)
    return None


def compute_in_place_status(
    spec: TRTModelSpec,
    *,
    generation: int,
    previous: TRTModelStatus,
    desired: DesiredRefit,
    decision: Decision,
    observed: InPlaceObserved,
    record: LastRefit | None,
    name: str,
    now: datetime,
) -> TRTModelStatus:
    """The status after an InPlace pass. `record` is the desired refit's record as the pass left it."""
    stage = decision.stage
    record = _with_rollout(record, stage, observed, desired.key, now)
    serving = _serving(stage, observed, desired, previous.serving, now)
    message = stage_message(stage, spec=spec, desired=desired, observed=observed, record=record, name=name)
    ready = len(observed.ready)
    current = len(observed.current(desired.key))
    pods = PodCounts(ready=ready, current=current, summary=f"{current}/{ready}")
    return TRTModelStatus(
        observed_generation=generation,
        phase=_ROWS[stage].phase,
        conditions=c.merge_conditions(
            previous.conditions, _conditions(stage, spec, message, record), generation, now
        ),
        serving=serving,
        pods=pods if observed.deployment is not None else None,
        last_refit=record if record is not None else previous.last_refit,
        history=history_after(previous.history, previous.serving, serving, now),
    )


def _conditions(
    stage: Stage, spec: TRTModelSpec, message: str, record: LastRefit | None
) -> list[c.Observation]:
    row = _ROWS[stage]
    reconciling = c.Observation(
        ConditionType.RECONCILING,
        c.T if row.reconciling else c.F,
        stage.value,
        message if row.reconciling else "",
    )
    if spec.paused and row.reconciling:
        reconciling = c.Observation(
            ConditionType.RECONCILING, c.F, c.PAUSED, f"spec.paused is true; {message}"
        )
    verified = _verified(stage, record, spec)
    ready = stage is Stage.READY
    rolled_out_reason = c.ROLLOUT_COMPLETE if ready else stage.value
    return [
        c.Observation(ConditionType.READY, c.T if ready else c.F, stage.value, message),
        reconciling,
        c.Observation(
            ConditionType.STALLED,
            c.T if row.stalled else c.F,
            stage.value if row.stalled else c.NOT_STALLED,
            message if row.stalled else "",
        ),
        verified,
        c.Observation(ConditionType.ROLLED_OUT, c.T if ready else c.F, rolled_out_reason, message),
    ]


def _verified(stage: Stage, record: LastRefit | None, spec: TRTModelSpec) -> c.Observation:
    kind = ConditionType.VERIFIED
    if record is not None and record.outcome is RefitOutcome.PASSED:
        return c.Observation(
            kind, c.T, c.VERIFICATION_PASSED, f"verification passed: {numbers(record, spec)}"
        )
    if record is not None and record.outcome is RefitOutcome.VERIFICATION_FAILED:
        return c.Observation(
            kind, c.F, Stage.VERIFICATION_FAILED.value, f"verification failed: {numbers(record, spec)}"
        )
    if stage is Stage.READY:
        return c.Observation(
            kind, c.T, c.SERVED, "every ready pod verified the checkpoint before it served it"
        )
    return c.Observation(kind, c.U, stage.value, "no pod has verified the checkpoint yet")


def _with_rollout(
    record: LastRefit | None, stage: Stage, observed: InPlaceObserved, key: str, now: datetime
) -> LastRefit | None:
    """The record with its rollout (the pods after the canary) brought up to date."""
    outcome = {
        Stage.ROLLING_OUT: RolloutOutcome.ROLLING_OUT,
        Stage.UNAUTHORIZED: RolloutOutcome.ROLLING_OUT,
        Stage.WAITING_FOR_PODS: RolloutOutcome.ROLLING_OUT,
        Stage.READY: RolloutOutcome.COMPLETE,
        Stage.POD_FAILED: RolloutOutcome.FAILED,
    }.get(stage)
    if record is None or outcome is None or record.outcome is not RefitOutcome.PASSED:
        return record
    rollout = record.rollout or RolloutStatus(
        deployment=observed.deployment or "", outcome=RolloutOutcome.ROLLING_OUT, started_at=now
    )
    if rollout.outcome is not outcome:
        done = outcome is not RolloutOutcome.ROLLING_OUT
        rollout = rollout.model_copy(
            update={
                "outcome": outcome,
                "finished_at": now if done else None,
                "seconds": (now - rollout.started_at).total_seconds() if done else None,
            }
        )
    current, ready = len(observed.current(key)), len(observed.ready)
    text = f"{current} of {ready} ready pods of Deployment {rollout.deployment} serve the checkpoint"
    return record.model_copy(update={"rollout": rollout.model_copy(update={"message": text})})


def _serving(
    stage: Stage,
    observed: InPlaceObserved,
    desired: DesiredRefit,
    previous: ServingStatus | None,
    now: datetime,
) -> ServingStatus | None:
    """What every ready pod serves, once they all serve the desired refit; until then what served before."""
    if stage is not Stage.READY:
        return previous
    states = [seen.state for seen in observed.current(desired.key) if seen.state is not None]
    first = states[0]
    engines = {state.engine.sha256 for state in states if state.engine is not None}
    checkpoints = {state.checkpoint.sha256 for state in states if state.checkpoint is not None}
    checkpoint_uri = first.checkpoint.uri if first.checkpoint is not None else desired.checkpoint.uri
    same = previous is not None and previous.refit_key == desired.key
    return ServingStatus(
        engine=Digest(uri=desired.engine.uri, sha256=engines.pop() if len(engines) == 1 else None),
        checkpoint=Digest(uri=checkpoint_uri, sha256=checkpoints.pop() if len(checkpoints) == 1 else None),
        refit_key=desired.key,
        since=previous.since if same and previous is not None else now,
    )
