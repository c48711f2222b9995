"""Kubernetes Events and metric samples for what changed in one pass: derived from the actions taken and
from the difference between the old and the new status, so a pass that changes nothing says nothing (also
after an operator restart)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from trtrefit.api.spec import TRTModelSpec
from trtrefit.api.status import ConditionType, LastRefit, RefitOutcome, RolloutOutcome, TRTModelStatus
from trtrefit.controller.assess import Step
from trtrefit.controller.conditions import PAUSED
from trtrefit.controller.messages import numbers
from trtrefit.controller.naming import job_name
from trtrefit.controller.plan import Action, CreateJob, DeleteJob, Revert, RollOut

NORMAL, WARNING = "Normal", "Warning"
# Stalled reasons that no refit or rollout Event already explains.
_STALLED_ALONE = (
    Step.API_DENIED,
    Step.NO_WORKER_IMAGE,
    Step.JOB_NOT_ALLOWED,
    Step.JOB_REFUSED,
    Step.NO_DEPLOYMENT,
    Step.NO_CONTAINER,
)


@dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class Finished:
    """A refit or rollout that ended in this pass, for the metrics."""

    what: str  # "refit" or "rollout"
    outcome: str
    seconds: float | None


def action_events(actions: Sequence[Action], model_name: str, spec: TRTModelSpec, key: str) -> list[Event]:
    events = []
    deployment = spec.serving.deployment_name
    for action in actions:
        if isinstance(action, CreateJob):
            name = job_name(model_name, key)
            attempt = f" (attempt {action.attempt})" if action.attempt > 1 else ""
            events.append(
                Event(
                    NORMAL,
                    "RefitStarted",
                    f"Created Job {name}{attempt} to refit checkpoint {spec.checkpoint.uri}",
                )
            )
        elif isinstance(action, DeleteJob) and action.replaced:
            events.append(
                Event(NORMAL, "RefitJobReplaced", f"Deleted Job {action.job.name}: {action.replaced}")
            )
        elif isinstance(action, DeleteJob):
            events.append(
                Event(
                    NORMAL,
                    "RefitSuperseded",
                    f"Deleted Job {action.job.name}: superseded by the refit of checkpoint "
                    f"{action.superseded_by.uri}",
                )
            )
        elif isinstance(action, RollOut):
            digest = f" (sha256 {action.engine.sha256[:12]})" if action.engine.sha256 else ""
            message = (
                f"Patched Deployment {deployment}: {spec.serving.engine_env_var}={action.engine.uri}{digest}"
            )
            events.append(Event(NORMAL, "RolloutStarted", message))
        elif isinstance(action, Revert):
            message = (
                f"Deployment {deployment} did not roll out; reverted it to engine {action.to.engine.uri}"
            )
            events.append(Event(WARNING, "RolloutReverted", message))
    return events


def refit_ended(old: LastRefit | None, new: LastRefit | None) -> bool:
    if new is None or new.outcome is RefitOutcome.RUNNING:
        return False
    return old is None or old.key != new.key or old.outcome is RefitOutcome.RUNNING


def rollout_ended(old: LastRefit | None, new: LastRefit | None) -> bool:
    rollout = new.rollout if new is not None else None
    if rollout is None or rollout.outcome is RolloutOutcome.ROLLING_OUT:
        return False
    before = old.rollout if old is not None and old.key == new.key else None  # type: ignore[union-attr]
    return before is None or before.outcome is not rollout.outcome


def _refit_event(record: LastRefit, spec: TRTModelSpec) -> Event:
    if record.outcome is RefitOutcome.PASSED:
        how = f"{record.path} path, " if record.path else ""
        took = f"{record.seconds:.1f} s" if record.seconds is not None else "time unknown"
        published = record.engine.uri if record.engine else "nothing"
        return Event(
            NORMAL, "RefitPassed", f"Verified ({numbers(record, spec)}; {how}{took}); published {published}"
        )
    if record.outcome is RefitOutcome.VERIFICATION_FAILED:
        return Event(
            WARNING,
            "VerificationFailed",
            f"Checkpoint {record.checkpoint.uri} failed verification: {numbers(record, spec)}; "
            "serving untouched",
        )
    failure = record.failure
    then = ""
    if failure is not None and failure.retry_at is not None:
        then = f"; {failure.reason}, retried at {failure.retry_at.isoformat()}"
    elif failure is not None and failure.waits_for:
        then = f"; {failure.reason}, runs again on {failure.waits_for}"
    if failure is not None and failure.reason == "ResultLost":
        return Event(WARNING, "RefitResultLost", f"{record.message}{then}")
    return Event(WARNING, "RefitFailed", f"Job {record.job} failed: {record.message}{then}")


def status_events(
    old: TRTModelStatus, new: TRTModelStatus, spec: TRTModelSpec
) -> tuple[list[Event], list[Finished]]:
    """Events and metric samples for the transitions between two statuses."""
    events: list[Event] = []
    finished: list[Finished] = []
    record = new.last_refit
    if record is not None and refit_ended(old.last_refit, record):
        events.append(_refit_event(record, spec))
        finished.append(Finished("refit", record.outcome.value, record.seconds))
    if record is not None and record.rollout is not None and rollout_ended(old.last_refit, record):
        rollout = record.rollout
        if rollout.outcome is RolloutOutcome.COMPLETE:
            engine = record.engine.uri if record.engine else ""
            events.append(
                Event(NORMAL, "RolloutComplete", f"Deployment {rollout.deployment} serves engine {engine}")
            )
        finished.append(Finished("rollout", rollout.outcome.value, rollout.seconds))
    events += condition_events(old, new, spec.paused, _STALLED_ALONE)
    events += _ready_events(old, new)
    return events, finished


# Ready reasons that get an Event when they start (or their message changes) without a Stalled one.
_READY_ALONE = {Step.API_FAILED: WARNING, Step.QUEUED: NORMAL}


def _ready_events(old: TRTModelStatus, new: TRTModelStatus) -> list[Event]:
    ready, was = new.condition(ConditionType.READY), old.condition(ConditionType.READY)
    if ready is None or ready.reason not in _READY_ALONE:
        return []
    if was is not None and (was.reason, was.message) == (ready.reason, ready.message):
        return []
    return [Event(_READY_ALONE[Step(ready.reason)], ready.reason, ready.message)]


def condition_events(
    old: TRTModelStatus, new: TRTModelStatus, paused: bool, stalled_alone_reasons: Collection[str]
) -> list[Event]:
    """A Warning when the model stalls for a reason no refit or rollout Event explains; Paused/Resumed."""
    events = []
    stalled, was_stalled = new.condition(ConditionType.STALLED), old.condition(ConditionType.STALLED)
    stalled_alone = (
        stalled is not None and stalled.status == "True" and stalled.reason in stalled_alone_reasons
    )
    if stalled is not None and stalled_alone and (was_stalled is None or was_stalled != stalled):
        events.append(Event(WARNING, stalled.reason, stalled.message))
    reconciling, was = new.condition(ConditionType.RECONCILING), old.condition(ConditionType.RECONCILING)
    paused_now = reconciling is not None and reconciling.reason == PAUSED
    paused_before = was is not None and was.reason == PAUSED
    if paused_now and not paused_before and reconciling is not None:
        events.append(Event(NORMAL, "Paused", reconciling.message))
    elif paused_before and not paused and not paused_now:
        events.append(Event(NORMAL, "Resumed", "spec.paused is false; work continues"))
    return events
