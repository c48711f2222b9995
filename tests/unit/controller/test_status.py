"""The one status function: kstatus conditions, phase, lastRefit, serving and history, from real objects."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from tests.unit.controller.objects import PUBLISHED, deployment, failed_verification, job, passed, pod
from tests.unit.controller.scenarios import NOW, World, key_of, world
from trtrefit.api.status import (
    ConditionStatus,
    ConditionType,
    Digest,
    Phase,
    RefitOutcome,
    RolloutOutcome,
    ServingStatus,
    TRTModelStatus,
)
from trtrefit.controller.kube import merge_patch

KEY = key_of()
JOB = f"resnet50-refit-{KEY[:10]}"
PASSED_POD = [pod("p", message=passed().to_json())]


def conditions(status: TRTModelStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status.value, c.reason) for c in status.conditions}


def test_every_pass_reports_the_generation_and_all_five_conditions() -> None:
    status = world(deployment=deployment(), generation=7).status()
    assert status.observed_generation == 7
    assert [c.type for c in status.conditions] == ["Ready", "Reconciling", "Stalled", "Verified", "RolledOut"]
    assert all(c.observed_generation == 7 for c in status.conditions)


def _refitting() -> World:
    return world(jobs=[job(JOB, KEY)], deployment=deployment())


def _verification_failed() -> World:
    pods = [pod("p", exit_code=2, message=failed_verification().to_json())]
    return world(jobs=[job(JOB, KEY, state="Failed")], pods=pods, deployment=deployment())


def _no_deployment() -> World:
    return world(jobs=[job(JOB, KEY, state="Complete")], pods=PASSED_POD, deployment=None)


# world -> phase, then Ready, Reconciling, Stalled, Verified
CASES: list[tuple[Callable[[], World], Phase, tuple[str, str, str, str]]] = [
    (lambda: world(deployment=deployment()), Phase.PENDING, ("False", "True", "False", "Unknown")),
    (_refitting, Phase.REFITTING, ("False", "True", "False", "Unknown")),
    (_verification_failed, Phase.FAILED, ("False", "False", "True", "False")),
    (_no_deployment, Phase.PENDING, ("False", "False", "True", "True")),
    (
        lambda: world(deployment=deployment(key=KEY, updated=1)),
        Phase.ROLLING_OUT,
        ("False", "True", "False", "True"),
    ),
    (lambda: world(deployment=deployment(key=KEY)), Phase.READY, ("True", "False", "False", "True")),
    (lambda: world(has_worker_image=False), Phase.PENDING, ("False", "False", "True", "Unknown")),
]


@pytest.mark.parametrize(("make", "phase", "expected"), CASES)
def test_phase_and_kstatus_conditions(
    make: Callable[[], World], phase: Phase, expected: tuple[str, str, str, str]
) -> None:
    status = make().status()
    got = conditions(status)
    assert status.phase is phase
    assert tuple(got[kind][0] for kind in ("Ready", "Reconciling", "Stalled", "Verified")) == expected
    assert not (got["Ready"][0] == "True" and "True" in (got["Reconciling"][0], got["Stalled"][0]))


def test_verification_failure_message_has_the_numbers_and_the_tolerances() -> None:
    w = world(
        jobs=[job(JOB, KEY, state="Failed")],
        pods=[pod("p", exit_code=2, message=failed_verification().to_json())],
        deployment=deployment(),
    )
    status = w.status()
    stalled = status.condition(ConditionType.STALLED)
    assert stalled is not None and stalled.reason == "VerificationFailed"
    assert "max abs error 0.5 (atol 0.01)" in stalled.message and "serving is untouched" in stalled.message
    record = status.last_refit
    assert record is not None and record.outcome is RefitOutcome.VERIFICATION_FAILED
    assert record.verification is not None and record.verification.max_rel_error == 0.9


def test_a_missing_deployment_is_named_in_the_stall() -> None:
    status = world(jobs=[job(JOB, KEY, state="Complete")], pods=PASSED_POD, deployment=None).status()
    stalled = status.condition(ConditionType.STALLED)
    assert stalled is not None and stalled.reason == "DeploymentNotFound"
    assert "Deployment resnet50-server not found" in stalled.message


def test_last_refit_has_timings_engine_and_numbers() -> None:
    status = world(jobs=[job(JOB, KEY, state="Complete")], pods=PASSED_POD, deployment=deployment()).status()
    record = status.last_refit
    assert record is not None
    assert (record.key, record.job, record.outcome, record.seconds) == (KEY, JOB, RefitOutcome.PASSED, 42.0)
    assert record.engine is not None and record.engine.uri == PUBLISHED
    assert record.verification is not None and record.verification.max_abs_error == 1e-3
    assert (record.backend, record.path) == ("exported", "exported")


def _again(w: World, status: TRTModelStatus, **changes: object) -> World:
    return world(
        jobs=changes.get("jobs", []),  # type: ignore[arg-type]
        pods=changes.get("pods", []),  # type: ignore[arg-type]
        deployment=changes.get("deployment"),  # type: ignore[arg-type]
        status=status,
    )


def test_an_unchanged_world_gives_an_equal_status_and_an_empty_patch() -> None:
    w = world(jobs=[job(JOB, KEY)], deployment=deployment())
    first = w.status()
    second = _again(w, first, jobs=[job(JOB, KEY)], deployment=deployment()).status(
        NOW + timedelta(minutes=5)
    )
    assert second == first
    assert merge_patch(first.wire(), second.wire()) == {}


def test_last_transition_time_moves_only_when_the_status_changes() -> None:
    refitting = world(jobs=[job(JOB, KEY)], deployment=deployment()).status()
    later = NOW + timedelta(minutes=3)
    done = _again(
        world(), refitting, jobs=[job(JOB, KEY, state="Complete")], pods=PASSED_POD, deployment=deployment()
    ).status(later)
    before, after = ({c.type: c.last_transition_time for c in s.conditions} for s in (refitting, done))
    assert after["Ready"] == before["Ready"] == NOW  # False -> False
    assert after["Reconciling"] == before["Reconciling"] == NOW  # True -> True (rollout pending)
    assert after["Verified"] == later  # Unknown -> True


def test_rollout_progress_then_completion_updates_serving_and_history() -> None:
    passed_status = world(
        jobs=[job(JOB, KEY, state="Complete")], pods=PASSED_POD, deployment=deployment()
    ).status()
    assert (
        passed_status.serving is not None
        and passed_status.serving.engine.uri == "s3://models/resnet50/engine.ep"
    )
    published = PUBLISHED
    rolling = _again(
        world(), passed_status, deployment=deployment(key=KEY, engine=published, updated=1)
    ).status()
    assert rolling.last_refit is not None and rolling.last_refit.rollout is not None
    assert rolling.last_refit.rollout.outcome is RolloutOutcome.ROLLING_OUT
    assert rolling.last_refit.rollout.started_at == NOW
    assert rolling.serving == passed_status.serving and rolling.history == []
    later = NOW + timedelta(seconds=30)
    ready = _again(world(), rolling, deployment=deployment(key=KEY, engine=published)).status(later)
    assert ready.phase is Phase.READY
    assert ready.last_refit is not None and ready.last_refit.rollout is not None
    assert ready.last_refit.rollout.outcome is RolloutOutcome.COMPLETE
    assert ready.last_refit.rollout.seconds == 30.0
    assert (
        ready.serving is not None and ready.serving.engine.uri == published and ready.serving.since == later
    )
    assert ready.serving.refit_key == KEY
    (entry,) = ready.history
    assert entry.engine.uri == "s3://models/resnet50/engine.ep" and entry.until == later


def test_history_is_bounded() -> None:
    from trtrefit.api.status import HistoryEntry

    old = [HistoryEntry(engine=Digest(uri=f"s3://e/{i}.ep"), until=NOW) for i in range(10)]
    status = TRTModelStatus(serving=ServingStatus(engine=Digest(uri="s3://e/now.ep")), history=old)
    ready = world(deployment=deployment(key=KEY, engine="s3://e/new.ep"), status=status).status()
    assert len(ready.history) == 10 and ready.history[0].engine.uri == "s3://e/now.ep"


def test_paused_holds_reconciling_false_with_the_reason() -> None:
    status = world({"paused": True}, deployment=deployment()).status()
    reconciling = status.condition(ConditionType.RECONCILING)
    assert reconciling is not None and reconciling.status is ConditionStatus.FALSE
    assert reconciling.reason == "Paused" and reconciling.message.startswith("spec.paused is true")
    assert status.phase is Phase.PENDING


def test_a_reverted_rollout_says_what_serves_now() -> None:
    prior = TRTModelStatus(
        serving=ServingStatus(engine=Digest(uri="s3://models/resnet50/engine.ep"), refit_key="0" * 32)
    )
    w = world(
        jobs=[job(JOB, KEY, state="Complete")],
        pods=PASSED_POD,
        deployment=deployment(key="0" * 32, reverted=KEY),
        status=prior,
    )
    status = w.status()
    assert status.phase is Phase.FAILED
    stalled = status.condition(ConditionType.STALLED)
    assert stalled is not None and stalled.reason == "RolloutReverted"
    assert "reverted to engine s3://models/resnet50/engine.ep" in stalled.message
