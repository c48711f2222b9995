"""One pass of the InPlace strategy for one TRTModel: make sure the token Secret and the desired-refit
ConfigMap exist, read the serving pods (from the API, then each pod's own report), decide, act, read again,
and keep going while the time budget allows, so a bump reaches every ready pod within one pass. Then the
status, the Events and the metric samples, for reconcile to write and post.

Level-based: every decision starts from what the pods report now; a restarted operator resumes from the
pods, the ConfigMap and the status."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from trtrefit.api.request import RefitRequest, refit_request
from trtrefit.api.serving import TOKEN_KEY
from trtrefit.api.status import LastRefit, TRTModelStatus
from trtrefit.api.trtmodel import TRTModel
from trtrefit.controller.desired import DesiredRefit, desired_refit
from trtrefit.controller.events import Event, Finished
from trtrefit.controller.inplace_events import in_place_action_events, in_place_status_events
from trtrefit.controller.inplace_objects import (
    build_config_map_update,
    build_desired_config_map,
    build_token_secret,
)
from trtrefit.controller.inplace_plan import (
    Canary,
    Decision,
    InPlaceAction,
    InPlaceObserved,
    RefitPods,
    Stage,
    decide_in_place,
    in_place_record,
)
from trtrefit.controller.inplace_status import canary_record, compute_in_place_status, current_record
from trtrefit.controller.kube import Cluster, ConflictError, InvalidError, NotFoundError
from trtrefit.controller.naming import RETRY_ANNOTATION, desired_config_map_name, token_secret_name
from trtrefit.controller.pods import PodClient
from trtrefit.controller.serving_pods import (
    DesiredConfig,
    PodState,
    RefitAnswer,
    desired_config,
    label_selector,
    live_pods,
    replicas_of,
    token_of,
)
from trtrefit.controller.views import one_line

BUDGET_SECONDS = 5.0  # keep acting within one pass this long; then the pass ends and runs again at once
CONTINUE_SECONDS = 0.1
IN_FLIGHT_SECONDS = 1.0  # a pod reports a refit of the desired key in progress
UNKNOWN_SECONDS = 2.0  # a ready pod did not answer
BLOCKED_SECONDS = 10.0  # a foreign ConfigMap, refused tokens: a human is expected, but look again
_DONE = (
    Stage.READY,
    Stage.VERIFICATION_FAILED,
    Stage.REFIT_FAILED,
    Stage.POD_FAILED,
    Stage.NO_DEPLOYMENT,
    Stage.NO_TOKEN,
    Stage.WAITING_FOR_PODS,  # a pod turning Ready changes the Deployment's status, whose watch runs a pass
)


@dataclass(frozen=True)
class InPlacePass:
    """What an InPlace pass computed, for reconcile to write (status) and say (Events, metrics)."""

    status: TRTModelStatus
    events: list[Event] = field(default_factory=list)
    finished: list[Finished] = field(default_factory=list)
    retry_after: float | None = None
    retry_reason: str = ""


@dataclass
class _Pass:
    """The state one pass carries between its steps (never across passes)."""

    cluster: Cluster
    pods: PodClient
    model: TRTModel
    desired: DesiredRefit
    request: RefitRequest
    clock: Callable[[], datetime]
    token: str | None = None
    token_problem: str = ""
    config: DesiredConfig | None = None
    config_problem: str = ""
    answers: list[RefitAnswer] = field(default_factory=list)
    done: list[InPlaceAction] = field(default_factory=list)
    record: LastRefit | None = None

    @property
    def namespace(self) -> str:
        return self.model.metadata.namespace or ""

    @property
    def name(self) -> str:
        return self.model.metadata.name


def reconcile_in_place(
    cluster: Cluster,
    pods: PodClient,
    model: TRTModel,
    *,
    generation: int,
    clock: Callable[[], datetime],
    budget_seconds: float = BUDGET_SECONDS,
) -> InPlacePass:
    """Run one InPlace pass (no status write: reconcile does that)."""
    desired = desired_refit(model.spec)
    attempt = model.metadata.annotations.get(RETRY_ANNOTATION)
    request = refit_request(model.spec, key=desired.key, attempt=attempt)
    run = _Pass(cluster, pods, model, desired, request, clock)
    run.record = in_place_record(model.status.last_refit, desired.key, attempt)
    paused = model.spec.paused
    _ensure_token(run, create=not paused)
    _ensure_config(run, create=not paused)
    deadline = time.monotonic() + budget_seconds
    while True:
        observed = _read_pods(run)
        decision = decide_in_place(
            desired.key, run.request, observed, run.record, model.spec.rollout.batch_size(observed.replicas)
        )
        if paused or decision.action is None or time.monotonic() > deadline:
            break
        _act(run, decision.action)
        run.done.append(decision.action)
    record = current_record(desired, observed, run.record, attempt)
    status = compute_in_place_status(
        model.spec,
        generation=generation,
        previous=model.status,
        desired=desired,
        decision=decision,
        observed=observed,
        record=record,
        name=run.name,
        now=clock(),
    )
    events = in_place_action_events(
        run.done, run.answers, name=run.name, spec=model.spec, replicas=observed.replicas
    )
    transitions, finished = in_place_status_events(model.status, status, model.spec, observed)
    retry_after, reason = _retry(decision, observed, paused)
    return InPlacePass(status, events + transitions, finished, retry_after, reason)


def _retry(decision: Decision, observed: InPlaceObserved, paused: bool) -> tuple[float | None, str]:
    if paused or decision.stage in _DONE:
        return None, ""
    if decision.action is not None:
        return CONTINUE_SECONDS, "the rollout continues in the next pass"
    if decision.stage in (Stage.UNAUTHORIZED, Stage.CONFIG_BLOCKED):
        return BLOCKED_SECONDS, f"InPlace rollout blocked ({decision.stage.value})"
    if any(seen.state is None for seen in observed.ready):
        return UNKNOWN_SECONDS, "a ready serving pod did not report its state"
    return IN_FLIGHT_SECONDS, "a serving pod is refitting"


def _ensure_token(run: _Pass, *, create: bool) -> None:
    name = token_secret_name(run.name)
    secret = run.cluster.get_secret(run.namespace, name)
    if secret is None and create:
        try:
            secret = run.cluster.create_secret(
                run.namespace, build_token_secret(run.model, secrets.token_urlsafe(32))
            )
        except ConflictError:  # made since we looked (by an earlier pass whose read did not show it)
            secret = run.cluster.get_secret(run.namespace, name)
        except InvalidError as exc:
            run.token_problem = f"creating Secret {name} failed: {one_line(exc.message)}"
            return
    if secret is None:
        run.token_problem = f"Secret {name} does not exist" + (" (spec.paused)" if not create else "")
        return
    run.token = token_of(secret)
    if run.token is None:
        run.token_problem = (
            f"Secret {name} has no usable key {TOKEN_KEY!r} (base64 of a token without spaces)"
        )


def _ensure_config(run: _Pass, *, create: bool) -> None:
    """The ConfigMap as it is; created with the desired request when absent (pods that start before any
    canary have nothing older to come up on)."""
    name = desired_config_map_name(run.name)
    found = run.cluster.get_config_map(run.namespace, name)
    if found is None and create:
        try:
            found = run.cluster.create_config_map(
                run.namespace, build_desired_config_map(run.model, run.request)
            )
        except ConflictError:
            found = run.cluster.get_config_map(run.namespace, name)
        except InvalidError as exc:
            run.config_problem = f"creating it failed: {one_line(exc.message)}"
            return
    if found is None:
        run.config_problem = "it does not exist" + (" (spec.paused)" if not create else "")
        return
    run.config = desired_config(found, run.model.metadata.uid or "")
    if not run.config.owned:
        run.config_problem = (
            "it exists and is not owned by this TRTModel; delete it and the operator makes its own"
        )


def _read_pods(run: _Pass) -> InPlaceObserved:
    spec = run.model.spec
    deployment = run.cluster.get_deployment(run.namespace, spec.serving.deployment_name)
    base = InPlaceObserved(
        deployment=None,
        token=run.token,
        token_problem=run.token_problem,
        config=run.config,
        config_problem=run.config_problem,
        answers=tuple(run.answers),
        attempt=run.request.attempt,
    )
    if deployment is None:
        return base
    selector = label_selector(deployment)
    views = live_pods(run.cluster.list_pods(run.namespace, selector)) if selector else []
    reachable = [view for view in views if view.ip is not None]
    reports = {s.pod.name: s for s in run.pods.states(reachable, spec.rollout.port, run.name)}
    states = tuple(reports.get(view.name) or PodState(view, None, "no pod IP yet") for view in views)
    return InPlaceObserved(
        deployment=deployment["metadata"]["name"],
        replicas=replicas_of(deployment),
        token=run.token,
        token_problem=run.token_problem,
        config=run.config,
        config_problem=run.config_problem,
        pods=states,
        answers=tuple(run.answers),
        attempt=run.request.attempt,
    )


def _act(run: _Pass, action: InPlaceAction) -> None:
    rollout = run.model.spec.rollout
    token = run.token or ""
    if isinstance(action, Canary):
        started = run.clock()
        answer = run.pods.refit(
            action.pod,
            rollout.port,
            run.name,
            token=token,
            request=run.request,
            timeout_seconds=rollout.timeout_seconds,
        )
        run.answers.append(answer)
        record = canary_record(run.desired, answer, started)
        if record is not None:
            run.record = record
    elif isinstance(action, RefitPods):
        run.answers += run.pods.refit_many(
            action.pods,
            rollout.port,
            run.name,
            token=token,
            request=run.request,
            timeout_seconds=rollout.timeout_seconds,
        )
    else:
        _update_config(run)


def _update_config(run: _Pass) -> None:
    """Move the ConfigMap to the desired request; on a conflict or a vanished ConfigMap, read it again."""
    config = run.config
    if config is None:
        return
    try:
        updated = run.cluster.patch_config_map(
            run.namespace, config.name, build_config_map_update(config, run.request)
        )
    except (ConflictError, NotFoundError):  # changed or deleted since we read it: read it again
        run.config, run.config_problem = None, ""
        _ensure_config(run, create=True)
        return
    except InvalidError as exc:
        run.config, run.config_problem = None, f"updating it failed: {one_line(exc.message)}"
        return
    run.config = desired_config(updated, run.model.metadata.uid or "")
