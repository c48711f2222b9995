"""Status and Events of an InPlace model, from real ServingState values: kstatus conditions per stage, pod
counts, serving, lastRefit with the canary's numbers, history, and Events only on transitions."""

from __future__ import annotations

from datetime import timedelta

from tests.unit.controller.inplace_world import (
    CKPT_SHA,
    ENGINE_SHA,
    NOW,
    OLD,
    desired_of,
    in_place_model,
    pod,
    result,
    state,
    world,
)
from trtrefit.api.result import Outcome
from trtrefit.api.status import (
    ConditionType,
    Digest,
    LastRefit,
    Phase,
    RefitOutcome,
    RolloutOutcome,
    ServingStatus,
    TRTModelStatus,
)
from trtrefit.controller.inplace_events import in_place_action_events, in_place_status_events
from trtrefit.controller.inplace_plan import (
    Canary,
    Decision,
    InPlaceAction,
    InPlaceObserved,
    Stage,
    UpdateConfig,
)
from trtrefit.controller.inplace_status import canary_record, compute_in_place_status, current_record
from trtrefit.controller.serving_pods import Answer, RefitAnswer

M = in_place_model()
DESIRED, REQUEST = desired_of(M)
KEY = DESIRED.key
OLD_SERVING = ServingStatus(
    engine=Digest(uri="s3://models/resnet50/engine.ep"),
    checkpoint=Digest(uri="s3://ckpt/resnet50/step-1100.safetensors"),
    refit_key=OLD,
    since=NOW - timedelta(hours=1),
)


def _status(
    stage: Stage,
    observed: InPlaceObserved,
    record: LastRefit | None = None,
    *,
    previous: TRTModelStatus | None = None,
    now_offset: float = 0,
    paused: bool = False,
) -> TRTModelStatus:
    spec = M.spec.model_copy(update={"paused": paused})
    return compute_in_place_status(
        spec,
        generation=4,
        previous=previous or TRTModelStatus(serving=OLD_SERVING),
        desired=DESIRED,
        decision=Decision(stage),
        observed=observed,
        record=current_record(DESIRED, observed, record, None),
        name="resnet50",
        now=NOW + timedelta(seconds=now_offset),
    )


def _conditions(status: TRTModelStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status.value, c.reason) for c in status.conditions}


def _canary_passed() -> LastRefit:
    answer = RefitAnswer("a", Answer.PASSED, result(KEY), 0.42)
    record = canary_record(DESIRED, answer, NOW)
    assert record is not None
    return record


def test_ready_when_every_ready_pod_serves_the_checkpoint() -> None:
    observed = world(M, [pod("a", state(KEY)), pod("b", state(KEY))], config_request=REQUEST)
    status = _status(Stage.READY, observed, _canary_passed())
    assert status.phase is Phase.READY and status.observed_generation == 4
    assert _conditions(status) == {
        "Ready": ("True", "Ready"),
        "Reconciling": ("False", "Ready"),
        "Stalled": ("False", "NotStalled"),
        "Verified": ("True", "VerificationPassed"),
        "RolledOut": ("True", "RolloutComplete"),
    }
    assert status.pods is not None and status.pods.summary == "2/2"
    assert status.serving == ServingStatus(
        engine=Digest(uri="s3://models/resnet50/engine.ep", sha256=ENGINE_SHA),
        checkpoint=Digest(uri="s3://ckpt/resnet50/step-1200.safetensors", sha256=CKPT_SHA),
        refit_key=KEY,
        since=NOW,
    )
    assert status.history[0].checkpoint == OLD_SERVING.checkpoint and status.history[0].until == NOW
    record = status.last_refit
    assert record is not None and record.canary == "a" and record.job is None
    assert record.verification is not None and record.verification.max_abs_error == 1e-4
    assert record.rollout is not None and record.rollout.outcome is RolloutOutcome.COMPLETE


def test_a_failed_canary_is_failed_stalled_and_not_verified_with_its_numbers() -> None:
    failed = state(OLD, last=result(KEY, Outcome.VERIFICATION_FAILED))
    observed = world(M, [pod("a", failed), pod("b", state(OLD))])
    status = _status(Stage.VERIFICATION_FAILED, observed)
    assert status.phase is Phase.FAILED
    conditions = _conditions(status)
    assert conditions["Stalled"] == ("True", "VerificationFailed")
    assert conditions["Verified"] == ("False", "VerificationFailed")
    assert conditions["Reconciling"][0] == "False"
    message = status.condition(ConditionType.READY)
    assert (
        message is not None
        and "max abs error 0.5 (atol 0.01)" in message.message
        and "pod a" in message.message
    )
    assert status.serving == OLD_SERVING  # what serves is untouched
    assert status.pods is not None and (status.pods.ready, status.pods.current) == (2, 0)
    assert status.last_refit is not None and status.last_refit.outcome is RefitOutcome.VERIFICATION_FAILED


def test_rolling_out_counts_pods_and_names_the_silent_ones() -> None:
    pods = [pod("a", state(KEY)), pod("b", state(OLD)), pod("c", None, problem="ConnectTimeoutError")]
    status = _status(Stage.ROLLING_OUT, world(M, pods, config_request=REQUEST), _canary_passed())
    assert status.phase is Phase.ROLLING_OUT
    assert _conditions(status)["Reconciling"] == ("True", "RollingOut")
    assert _conditions(status)["Verified"][0] == "True"
    ready = status.condition(ConditionType.READY)
    assert ready is not None and ready.message.startswith("1 of 3 ready pods serve checkpoint")
    assert "c: ConnectTimeoutError" in ready.message
    assert status.pods is not None and status.pods.summary == "1/3"
    assert status.last_refit is not None and status.last_refit.rollout is not None
    assert status.last_refit.rollout.outcome is RolloutOutcome.ROLLING_OUT


def test_an_idle_pass_computes_the_same_status() -> None:
    observed = world(M, [pod("a", state(KEY))], config_request=REQUEST)
    first = _status(Stage.READY, observed, _canary_passed())
    again = _status(Stage.READY, observed, first.last_refit, previous=first, now_offset=30)
    assert again == first  # lastTransitionTime, since and rollout times kept: nothing to write


def test_pods_that_came_up_on_the_key_give_the_record_and_verified_served() -> None:
    observed = world(M, [pod("a", state(KEY, last=result(KEY)))], config_request=REQUEST)
    status = _status(Stage.READY, observed)
    assert status.last_refit is not None and status.last_refit.canary == "a"
    assert _conditions(status)["Verified"] == ("True", "VerificationPassed")
    bare = _status(Stage.READY, world(M, [pod("a", state(KEY))], config_request=REQUEST))
    assert _conditions(bare)["Verified"] == ("True", "Served")


def test_paused_is_not_reconciling() -> None:
    status = _status(Stage.CANARY, world(M, [pod("a", state(OLD))]), paused=True)
    assert _conditions(status)["Reconciling"] == ("False", "Paused")


def test_events_say_what_the_pass_did_and_what_changed() -> None:
    actions: list[InPlaceAction] = [Canary(pod("a", state(OLD)).pod), UpdateConfig()]
    answers = [RefitAnswer("a", Answer.PASSED, result(KEY), 0.2)]
    events = in_place_action_events(actions, answers, name="resnet50", spec=M.spec, replicas=3)
    assert [e.reason for e in events] == ["RefitStarted", "RolloutStarted"]
    unanswered = [RefitAnswer("a", Answer.UNKNOWN, None, 2.0, "ReadTimeoutError")]
    assert in_place_action_events(actions[:1], unanswered, name="resnet50", spec=M.spec, replicas=3) == []
    assert "canary pod a" in events[0].message and "resnet50-trtrefit" in events[1].message

    before = TRTModelStatus(serving=OLD_SERVING)
    observed = world(M, [pod("a", state(KEY)), pod("b", state(KEY))], config_request=REQUEST)
    after = _status(Stage.READY, observed, _canary_passed())
    said, finished = in_place_status_events(before, after, M.spec, observed)
    assert [e.reason for e in said] == ["RefitPassed", "RolloutComplete"]
    assert "a, b" in said[1].message
    assert [(f.what, f.outcome) for f in finished] == [("refit", "Passed"), ("rollout", "Complete")]
    assert in_place_status_events(after, after, M.spec, observed) == ([], [])  # a restart repeats none


def test_a_failed_canary_says_so_once_as_a_warning() -> None:
    failed = world(M, [pod("a", state(OLD, last=result(KEY, Outcome.VERIFICATION_FAILED)))])
    after = _status(Stage.VERIFICATION_FAILED, failed)
    said, _ = in_place_status_events(TRTModelStatus(), after, M.spec, failed)
    assert [(e.type, e.reason) for e in said] == [("Warning", "VerificationFailed")]
    assert "no other pod was touched" in said[0].message
