"""Events and metric samples of an InPlace pass: from the actions it took (a canary request, the ConfigMap
update) and from the difference between the old and the new status, so a pass that changes nothing says
nothing, also after an operator restart."""

from __future__ import annotations

from collections.abc import Sequence

from trtrefit.api.spec import TRTModelSpec
from trtrefit.api.status import ConditionType, LastRefit, RefitOutcome, RolloutOutcome, TRTModelStatus
from trtrefit.controller.events import (
    NORMAL,
    WARNING,
    Event,
    Finished,
    condition_events,
    refit_ended,
    rollout_ended,
)
from trtrefit.controller.inplace_plan import Canary, InPlaceAction, InPlaceObserved, Stage, UpdateConfig
from trtrefit.controller.messages import numbers
from trtrefit.controller.naming import desired_config_map_name
from trtrefit.controller.serving_pods import Answer, RefitAnswer

# Stalled reasons that no refit or rollout Event already explains.
_STALLED_ALONE = (Stage.NO_DEPLOYMENT, Stage.NO_TOKEN, Stage.UNAUTHORIZED)


def in_place_action_events(
    actions: Sequence[InPlaceAction],
    answers: Sequence[RefitAnswer],
    *,
    name: str,
    spec: TRTModelSpec,
    replicas: int,
) -> list[Event]:
    """What the pass did: a canary's refit (one that answered with a verdict: a request that got no answer or
    a 401 is retried by later passes, and status says why, not an Event each time), the ConfigMap moved on
    after the canary passed."""
    events = []
    checkpoint, deployment = spec.checkpoint.uri, spec.serving.deployment_name
    verdicts = {a.pod for a in answers if a.answer in (Answer.PASSED, Answer.FAILED)}
    canary = next((a.pod.name for a in actions if isinstance(a, Canary) and a.pod.name in verdicts), None)
    if canary is not None:
        events.append(
            Event(
                NORMAL,
                "RefitStarted",
                f"Sent the refit of checkpoint {checkpoint} to canary pod {canary} of Deployment "
                f"{deployment}",
            )
        )
    if any(isinstance(a, UpdateConfig) for a in actions):
        batch = spec.rollout.batch_size(replicas)
        events.append(
            Event(
                NORMAL,
                "RolloutStarted",
                f"ConfigMap {desired_config_map_name(name)} now starts pods on checkpoint {checkpoint}; "
                f"refitting the other ready pods of Deployment {deployment}, {batch} at a time",
            )
        )
    return events


def _refit_event(record: LastRefit, spec: TRTModelSpec) -> Event:
    pod, checkpoint = record.canary, record.checkpoint.uri
    if record.outcome is RefitOutcome.PASSED:
        how = f"{record.path} path, " if record.path else ""
        took = f"{record.seconds:.2f} s" if record.seconds is not None else "at start"
        return Event(
            NORMAL,
            "RefitPassed",
            f"Pod {pod} verified checkpoint {checkpoint} ({numbers(record, spec)}; {how}{took})",
        )
    if record.outcome is RefitOutcome.VERIFICATION_FAILED:
        return Event(
            WARNING,
            "VerificationFailed",
            f"Checkpoint {checkpoint} failed verification on pod {pod}: {numbers(record, spec)}; the pod "
            "rolled back and no other pod was touched",
        )
    return Event(
        WARNING, "RefitFailed", f"The refit of checkpoint {checkpoint} failed on pod {pod}: {record.message}"
    )


def in_place_status_events(
    old: TRTModelStatus, new: TRTModelStatus, spec: TRTModelSpec, observed: InPlaceObserved
) -> tuple[list[Event], list[Finished]]:
    """Events and metric samples for the transitions between two statuses of an InPlace model."""
    events: list[Event] = []
    finished: list[Finished] = []
    record = new.last_refit
    if record is not None and record.canary is not None and refit_ended(old.last_refit, record):
        events.append(_refit_event(record, spec))
        finished.append(Finished("refit", record.outcome.value, record.seconds))
    rollout = record.rollout if record is not None else None
    if record is not None and rollout is not None and rollout_ended(old.last_refit, record):
        if rollout.outcome is RolloutOutcome.COMPLETE:
            pods = ", ".join(s.pod.name for s in observed.current(record.key))
            message = (
                f"All {len(observed.ready)} ready pods of Deployment {rollout.deployment} serve checkpoint "
                f"{record.checkpoint.uri}: {pods}"
            )
            events.append(Event(NORMAL, "RolloutComplete", message))
        else:
            ready = new.condition(ConditionType.READY)
            events.append(Event(WARNING, Stage.POD_FAILED.value, ready.message if ready else rollout.message))
        finished.append(Finished("rollout", rollout.outcome.value, rollout.seconds))
    events += condition_events(old, new, spec.paused, _STALLED_ALONE)
    return events, finished
