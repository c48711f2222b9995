"""The InPlace rollout's next step, from what the pods report (level-based: nothing is assumed from earlier
passes except the canary's recorded result in status). Pure: `inplace` carries the action out, reads the
pods again and asks again.

Order: a canary (the first ready pod by name that answers and is not current yet) gets the refit request;
once it passed, the ConfigMap gets the new request (so pods that start later come up on it), then the other
ready pods in batches of spec.rollout.maxConcurrent. A failed canary stops everything until the spec
changes; every other pod keeps serving what it served.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from trtrefit.api.request import RefitRequest
from trtrefit.api.result import Outcome, RefitResult
from trtrefit.api.status import LastRefit, RefitOutcome
from trtrefit.controller.serving_pods import Answer, DesiredConfig, PodState, PodView, RefitAnswer


class Stage(StrEnum):
    """Where an InPlace rollout stands; the values double as condition reasons."""

    NO_DEPLOYMENT = "DeploymentNotFound"
    NO_TOKEN = "RefitTokenMissing"
    CONFIG_BLOCKED = "ConfigMapBlocked"
    WAITING_FOR_PODS = "WaitingForReadyPods"
    CANARY = "CanaryRefitting"
    VERIFICATION_FAILED = "VerificationFailed"
    REFIT_FAILED = "RefitFailed"
    UNAUTHORIZED = "RefitUnauthorized"
    ROLLING_OUT = "RollingOut"
    POD_FAILED = "PodRefitFailed"
    READY = "Ready"


@dataclass(frozen=True)
class Canary:
    """Send the refit request to this pod first."""

    pod: PodView


@dataclass(frozen=True)
class UpdateConfig:
    """Put the desired request into the ConfigMap: the canary passed."""


@dataclass(frozen=True)
class RefitPods:
    """Send the refit request to these pods at once (one batch)."""

    pods: tuple[PodView, ...]


InPlaceAction = Canary | UpdateConfig | RefitPods


@dataclass(frozen=True)
class InPlaceObserved:
    """Everything one InPlace pass knows besides the TRTModel: the Deployment, the token, the ConfigMap, the
    live pods with what each reported, and the answers pods gave to this pass's refit requests."""

    deployment: str | None
    replicas: int = 0
    token: str | None = None
    token_problem: str = ""
    config: DesiredConfig | None = None
    config_problem: str = ""
    pods: tuple[PodState, ...] = ()
    answers: tuple[RefitAnswer, ...] = ()
    attempt: str | None = None  # the retry annotation the requests of this pass carry

    @property
    def ready(self) -> list[PodState]:
        return [seen for seen in self.pods if seen.pod.ready]

    def current(self, key: str) -> list[PodState]:
        return [seen for seen in self.ready if seen.serves(key)]

    def answered(self, answer: Answer) -> list[RefitAnswer]:
        return [a for a in self.answers if a.answer is answer]


@dataclass(frozen=True)
class Decision:
    stage: Stage
    action: InPlaceAction | None = None


FAILED_OUTCOMES = (RefitOutcome.VERIFICATION_FAILED, RefitOutcome.FAILED)


def in_place_record(record: LastRefit | None, key: str, attempt: str | None) -> LastRefit | None:
    """The recorded InPlace refit of `key` (a canary's result), if status holds one. A failure recorded
    under another retry annotation value is an earlier attempt: the new value asks for another canary."""
    if record is None or record.key != key or record.canary is None:
        return None
    if record.outcome in FAILED_OUTCOMES and record.retry_token != attempt:
        return None
    return record


def failed_at_pod(observed: InPlaceObserved, key: str, attempt: str | None) -> tuple[str, RefitResult] | None:
    """A pod, ready or not, that rolled back a refit to `key` in this attempt (a canary, or a pod that
    failed it at start)."""
    for seen in observed.pods:
        result = seen.failed(key, attempt)
        if result is not None:
            return seen.pod.name, result
    return None


def failure_stage(outcome: RefitOutcome | Outcome) -> Stage:
    verification = outcome in (RefitOutcome.VERIFICATION_FAILED, Outcome.VERIFICATION_FAILED)
    return Stage.VERIFICATION_FAILED if verification else Stage.REFIT_FAILED


def decide_in_place(
    key: str,
    request: RefitRequest,
    observed: InPlaceObserved,
    record: LastRefit | None,
    batch_size: int,
) -> Decision:
    """The stage of the rollout of refit `key` and the one action that moves it forward, if any."""
    blocked = _blocked(observed)
    if blocked is not None or observed.config is None:
        return Decision(blocked or Stage.CONFIG_BLOCKED)
    recorded = in_place_record(record, key, request.attempt)
    if recorded is not None and recorded.outcome in FAILED_OUTCOMES:
        return Decision(failure_stage(recorded.outcome))
    passed = bool(observed.current(key)) or (recorded is not None and recorded.outcome is RefitOutcome.PASSED)
    if not passed:
        return _canary(key, request.attempt, observed)
    if observed.config.request != request:
        return Decision(Stage.ROLLING_OUT, UpdateConfig())
    return _batches(key, request.attempt, observed, batch_size)


def _blocked(observed: InPlaceObserved) -> Stage | None:
    """What keeps the rollout from starting at all: no Deployment, no token, no ConfigMap of ours."""
    if observed.deployment is None:
        return Stage.NO_DEPLOYMENT
    if observed.token is None:
        return Stage.NO_TOKEN
    if observed.config is None or not observed.config.owned:
        return Stage.CONFIG_BLOCKED
    return None


def _untried(states: Sequence[PodState], observed: InPlaceObserved) -> list[PodState]:
    """Pods that answered GET and got no request from this pass yet (each pod once per pass)."""
    tried = {a.pod for a in observed.answers}
    return [seen for seen in states if seen.state is not None and seen.pod.name not in tried]


def _canary(key: str, attempt: str | None, observed: InPlaceObserved) -> Decision:
    failed = failed_at_pod(observed, key, attempt)
    if failed is not None:
        return Decision(failure_stage(failed[1].outcome))
    ready = observed.ready
    if not ready:
        return Decision(Stage.WAITING_FOR_PODS)
    if any(seen.refitting(key) for seen in ready):
        return Decision(Stage.CANARY)  # a request sent earlier (by a previous operator, say) is running
    candidates = _untried(ready, observed)
    if candidates:
        return Decision(Stage.CANARY, Canary(candidates[0].pod))
    if observed.answered(Answer.UNAUTHORIZED):
        return Decision(Stage.UNAUTHORIZED)
    return Decision(Stage.CANARY)


def _batches(key: str, attempt: str | None, observed: InPlaceObserved, batch_size: int) -> Decision:
    ready = observed.ready
    if not ready:
        return Decision(Stage.WAITING_FOR_PODS)
    behind = [seen for seen in ready if not seen.serves(key)]
    if not behind:
        return Decision(Stage.READY)
    in_flight = [seen for seen in behind if seen.refitting(key)]
    failed = [seen for seen in behind if seen.failed(key, attempt) is not None]
    pending = _untried([s for s in behind if s not in in_flight and s not in failed], observed)
    room = batch_size - len(in_flight)
    if pending and room > 0:
        return Decision(Stage.ROLLING_OUT, RefitPods(tuple(seen.pod for seen in pending[:room])))
    if failed and not in_flight and not pending:
        return Decision(Stage.POD_FAILED)
    if observed.answered(Answer.UNAUTHORIZED) and not in_flight:
        return Decision(Stage.UNAUTHORIZED)
    return Decision(Stage.ROLLING_OUT)
