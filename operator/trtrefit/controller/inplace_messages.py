"""The human sentences of an InPlace model's status: one per stage, naming the pods, objects and numbers
involved and, when stuck, what a human can do."""

from __future__ import annotations

from collections.abc import Sequence

from trtrefit.api.spec import TRTModelSpec
from trtrefit.api.status import LastRefit
from trtrefit.controller.desired import DesiredRefit
from trtrefit.controller.inplace_plan import InPlaceObserved, Stage
from trtrefit.controller.messages import numbers
from trtrefit.controller.naming import desired_config_map_name, token_secret_name
from trtrefit.controller.serving_pods import Answer, PodState
from trtrefit.controller.views import one_line

MAX_LISTED = 5  # pods named in one message
_FOREIGN = "it belongs to another owner; delete it and the operator makes its own"


def pod_list(states: Sequence[PodState], label: str = "") -> str:
    """`a: why; b: why and 3 more`: pods with their problem (or `label`)."""
    named = [f"{s.pod.name}: {label or s.problem}" if (label or s.problem) else s.pod.name for s in states]
    more = f" and {len(named) - MAX_LISTED} more" if len(named) > MAX_LISTED else ""
    return "; ".join(named[:MAX_LISTED]) + more


def _unknown(observed: InPlaceObserved) -> str:
    unknown = [seen for seen in observed.ready if seen.state is None]
    return f"; no state from {pod_list(unknown)}" if unknown else ""


def _waiting(observed: InPlaceObserved, deployment: str, checkpoint: str) -> str:
    reporting = [seen for seen in observed.pods if seen.problem]
    detail = f" ({len(observed.pods)} not ready{'; ' + pod_list(reporting) if reporting else ''})"
    return f"no ready pod of Deployment {deployment} to refit to checkpoint {checkpoint}{detail}"


def _canary(observed: InPlaceObserved, key: str, checkpoint: str) -> str:
    busy = [seen for seen in observed.ready if seen.refitting(key)]
    if busy:
        return f"canary pod {busy[0].pod.name} is refitting checkpoint {checkpoint}"
    return f"waiting for a ready pod to try checkpoint {checkpoint} on{_unknown(observed)}"


def _pods_failed(observed: InPlaceObserved, key: str, checkpoint: str, canary: str | None) -> str:
    failed = [
        (seen.pod.name, result)
        for seen in observed.ready
        if (result := seen.failed(key, observed.attempt)) is not None
    ]
    reasons = "; ".join(f"{pod}: {one_line(result.message, 160)}" for pod, result in failed[:MAX_LISTED])
    current, ready = len(observed.current(key)), len(observed.ready)
    return (
        f"{len(failed)} pods rolled back checkpoint {checkpoint} after canary {canary} passed ({reasons}); "
        f"{current} of {ready} ready pods serve it"
    )


def _rolling(observed: InPlaceObserved, key: str, checkpoint: str) -> str:
    busy = [seen for seen in observed.ready if seen.refitting(key)]
    flight = f"; refitting now: {pod_list(busy)}" if busy else ""
    current, ready = len(observed.current(key)), len(observed.ready)
    return f"{current} of {ready} ready pods serve checkpoint {checkpoint}{flight}{_unknown(observed)}"


def stage_message(
    stage: Stage,
    *,
    spec: TRTModelSpec,
    desired: DesiredRefit,
    observed: InPlaceObserved,
    record: LastRefit | None,
    name: str,
) -> str:
    """One sentence saying where the InPlace rollout of the desired refit stands."""
    checkpoint, key = desired.checkpoint.uri, desired.key
    deployment = spec.serving.deployment_name
    canary = record.canary if record is not None else None
    measured = numbers(record, spec) if record is not None else "no numbers"
    detail = f": {record.message}" if record is not None and record.message else ""
    refused = ", ".join(a.pod for a in observed.answered(Answer.UNAUTHORIZED))
    if stage is Stage.WAITING_FOR_PODS:
        return _waiting(observed, deployment, checkpoint)
    if stage is Stage.CANARY:
        return _canary(observed, key, checkpoint)
    if stage is Stage.POD_FAILED:
        return _pods_failed(observed, key, checkpoint, canary)
    if stage is Stage.ROLLING_OUT:
        return _rolling(observed, key, checkpoint)
    return {
        Stage.NO_DEPLOYMENT: f"Deployment {deployment} not found; the refit of checkpoint {checkpoint} waits",
        Stage.NO_TOKEN: f"no refit token from Secret {token_secret_name(name)}: {observed.token_problem}",
        Stage.CONFIG_BLOCKED: (
            f"cannot use ConfigMap {desired_config_map_name(name)}: {observed.config_problem or _FOREIGN}"
        ),
        Stage.VERIFICATION_FAILED: (
            f"checkpoint {checkpoint} failed verification on pod {canary} ({measured}); it rolled back and "
            "no other pod was touched"
        ),
        Stage.REFIT_FAILED: (
            f"the refit of checkpoint {checkpoint} failed on pod {canary}{detail}; no other pod was touched"
        ),
        Stage.UNAUTHORIZED: (
            f"pods refused the refit token of Secret {token_secret_name(name)} (401): {refused}; they read "
            "another token when they started: restart them, or put that token back"
        ),
        Stage.READY: (
            f"all {len(observed.ready)} ready pods of Deployment {deployment} serve checkpoint {checkpoint}, "
            "verified"
        ),
    }[stage]
