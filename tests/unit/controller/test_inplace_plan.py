"""The InPlace planner on real ServingState values: canary first, the ConfigMap only after it passed, then
batches of maxConcurrent; a failed canary stops everything; Ready only when every ready pod serves the key."""

from __future__ import annotations

import dataclasses
from typing import Any

from tests.unit.controller.inplace_world import OLD, desired_of, in_place_model, pod, result, state, world
from trtrefit.api.result import Outcome
from trtrefit.api.status import Digest, LastRefit, RefitOutcome
from trtrefit.controller.inplace_plan import Canary, Decision, RefitPods, Stage, UpdateConfig, decide_in_place
from trtrefit.controller.serving_pods import Answer, PodState, RefitAnswer

M = in_place_model()
DESIRED, REQUEST = desired_of(M)
KEY = DESIRED.key


def _decide(pods: list[PodState], record: LastRefit | None = None, batch: int = 1, **kwargs: Any) -> Decision:
    return decide_in_place(KEY, REQUEST, world(M, pods, **kwargs), record, batch)


def _record(outcome: RefitOutcome, canary: str | None = "a") -> LastRefit:
    return LastRefit(key=KEY, canary=canary, checkpoint=Digest(uri="s3://c"), outcome=outcome)


def test_the_canary_is_the_first_ready_pod_by_name_that_answers() -> None:
    pods = [
        pod("c", state(OLD)),
        pod("a", state(OLD), ready=False),
        pod("b", None, problem="timeout"),
        pod("d", state(OLD)),
    ]
    decision = _decide(pods)
    assert decision.stage is Stage.CANARY
    assert isinstance(decision.action, Canary) and decision.action.pod.name == "c"


def test_no_ready_pod_waits_and_touches_nothing() -> None:
    decision = _decide([pod("a", state(OLD), ready=False)])
    assert decision == Decision(Stage.WAITING_FOR_PODS)


def test_a_refit_in_flight_is_waited_for_not_sent_again() -> None:
    decision = _decide([pod("a", state(OLD, refitting=KEY)), pod("b", state(OLD))])
    assert decision == Decision(Stage.CANARY)


def test_a_failed_canary_stalls_and_touches_no_other_pod() -> None:
    failed = state(OLD, last=result(KEY, Outcome.VERIFICATION_FAILED))
    assert _decide([pod("a", failed), pod("b", state(OLD))]) == Decision(Stage.VERIFICATION_FAILED)
    error = state(OLD, last=result(KEY, Outcome.ERROR))
    assert _decide([pod("a", error), pod("b", state(OLD))]) == Decision(Stage.REFIT_FAILED)
    # The recorded verdict holds even when no pod reports it any more (the canary was replaced).
    recorded = _record(RefitOutcome.VERIFICATION_FAILED)
    assert _decide([pod("b", state(OLD))], recorded) == Decision(Stage.VERIFICATION_FAILED)


def test_a_new_retry_annotation_value_sends_the_canary_again() -> None:
    """`kubectl annotate trtm NAME trtrefit.dev/retry=2`: the failure of the earlier attempt (on the pod and
    in status) no longer stops the rollout; a failure of this attempt does."""
    failed = state(OLD, last=result(KEY, Outcome.VERIFICATION_FAILED))
    recorded = _record(RefitOutcome.VERIFICATION_FAILED)
    retry = REQUEST.model_copy(update={"attempt": "2"})
    decision = decide_in_place(KEY, retry, world(M, [pod("a", failed), pod("b", state(OLD))]), recorded, 1)
    assert decision.stage is Stage.CANARY
    assert isinstance(decision.action, Canary) and decision.action.pod.name == "a"
    again = result(KEY, Outcome.VERIFICATION_FAILED).model_copy(update={"attempt": "2"})
    pods = [pod("a", state(OLD, last=again)), pod("b", state(OLD))]
    assert decide_in_place(KEY, retry, world(M, pods), None, 1) == Decision(Stage.VERIFICATION_FAILED)
    this_attempt = recorded.model_copy(update={"retry_token": "2"})
    assert decide_in_place(KEY, retry, world(M, [pod("b", state(OLD))]), this_attempt, 1) == Decision(
        Stage.VERIFICATION_FAILED
    )


def test_a_pod_that_failed_the_key_at_start_counts_as_a_failed_refit() -> None:
    starting = state(None, ready=False, last=result(KEY, Outcome.VERIFICATION_FAILED))
    decision = _decide([pod("a", starting, ready=False)], config_request=REQUEST)
    assert decision.stage is Stage.VERIFICATION_FAILED and decision.action is None


def test_the_config_map_moves_on_only_after_the_canary_passed() -> None:
    canary_done = [pod("a", state(KEY)), pod("b", state(OLD)), pod("c", state(OLD))]
    decision = _decide(canary_done)
    assert decision == Decision(Stage.ROLLING_OUT, UpdateConfig())
    # A recorded pass counts too, even when the canary pod is gone since.
    assert _decide([pod("b", state(OLD))], _record(RefitOutcome.PASSED)).action == UpdateConfig()


def test_batches_of_max_concurrent_skip_current_busy_and_failed_pods() -> None:
    pods = [
        pod("a", state(KEY)),
        pod("b", state(OLD, refitting=KEY)),
        pod("c", state(OLD, last=result(KEY, Outcome.VERIFICATION_FAILED))),
        pod("d", state(OLD)),
        pod("e", state(OLD)),
        pod("f", state(OLD)),
    ]
    decision = _decide(pods, batch=3, config_request=REQUEST)
    assert isinstance(decision.action, RefitPods)
    assert [p.name for p in decision.action.pods] == ["d", "e"]  # 3 at a time, one (b) in flight
    assert _decide(pods, batch=1, config_request=REQUEST) == Decision(Stage.ROLLING_OUT)


def test_each_pod_gets_one_request_per_pass() -> None:
    tried = (RefitAnswer("b", Answer.UNKNOWN, None, 0.1, "timeout"),)
    pods = [pod("a", state(KEY)), pod("b", state(OLD))]
    assert _decide(pods, config_request=REQUEST, answers=tried) == Decision(Stage.ROLLING_OUT)


def test_refused_tokens_stall_once_no_pod_is_left_to_try() -> None:
    refused = (RefitAnswer("a", Answer.UNAUTHORIZED, None, 0.01, "401"),)
    assert _decide([pod("a", state(OLD))], answers=refused) == Decision(Stage.UNAUTHORIZED)


def test_a_pod_failing_after_the_canary_ends_the_rollout_as_failed() -> None:
    pods = [pod("a", state(KEY)), pod("b", state(OLD, last=result(KEY, Outcome.VERIFICATION_FAILED)))]
    assert _decide(pods, config_request=REQUEST) == Decision(Stage.POD_FAILED)


def test_ready_when_every_ready_pod_serves_the_key_and_the_config_map_holds_it() -> None:
    pods = [pod("a", state(KEY)), pod("b", state(KEY)), pod("z", state(OLD), ready=False)]
    assert _decide(pods, config_request=REQUEST) == Decision(Stage.READY)
    # A ready pod that does not answer is not current: no Ready on a guess.
    assert (
        _decide([*pods, pod("c", None, problem="timeout")], config_request=REQUEST).stage is Stage.ROLLING_OUT
    )


def test_nothing_starts_without_deployment_token_or_a_config_map_of_ours() -> None:
    observed = world(M, [pod("a", state(OLD))])
    assert observed.config is not None
    gone = dataclasses.replace(observed, deployment=None)
    no_token = dataclasses.replace(observed, token=None, token_problem="no key token")
    foreign = dataclasses.replace(observed, config=dataclasses.replace(observed.config, owned=False))
    assert decide_in_place(KEY, REQUEST, gone, None, 1).stage is Stage.NO_DEPLOYMENT
    assert decide_in_place(KEY, REQUEST, no_token, None, 1).stage is Stage.NO_TOKEN
    assert decide_in_place(KEY, REQUEST, foreign, None, 1).stage is Stage.CONFIG_BLOCKED
