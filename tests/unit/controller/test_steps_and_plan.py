"""From the observed world to one step and at most one step's action (plus superseding old Jobs)."""

from __future__ import annotations

from datetime import timedelta

from tests.unit.controller.objects import PUBLISHED, deployment, failed_verification, job, passed, pod
from tests.unit.controller.scenarios import NOW, key_of, world
from trtrefit.api.status import (
    Digest,
    LastRefit,
    RefitOutcome,
    RolloutOutcome,
    RolloutStatus,
    ServingStatus,
    TRTModelStatus,
)
from trtrefit.controller.assess import Step, assess
from trtrefit.controller.plan import CreateJob, DeleteJob, Revert, RollOut

KEY = key_of()
JOB = f"resnet50-refit-{KEY[:10]}"
OLD = "0" * 32


def finished_job() -> list[dict[str, object]]:
    return [job(JOB, KEY, state="Complete")]


def test_a_new_model_gets_one_refit_job() -> None:
    w = world(deployment=deployment())
    assert w.assessment().step is Step.NEEDS_JOB
    assert w.actions() == [CreateJob()]


def test_no_worker_image_is_a_stall_not_an_action() -> None:
    w = world(deployment=deployment(), has_worker_image=False)
    assert w.assessment().step is Step.NO_WORKER_IMAGE and w.actions() == []


def test_a_running_job_is_waited_for() -> None:
    w = world(jobs=[job(JOB, KEY)], deployment=deployment())
    assert w.assessment().step is Step.REFITTING and w.actions() == []


def test_a_newer_checkpoint_supersedes_the_running_job() -> None:
    w = world(jobs=[job("resnet50-refit-0000000000", OLD, uid="old")], deployment=deployment())
    actions = w.actions()
    assert [type(a) for a in actions] == [DeleteJob, CreateJob]
    assert isinstance(actions[0], DeleteJob) and actions[0].job.uid == "old"
    assert actions[0].superseded_by.uri == "s3://ckpt/resnet50/step-1200.safetensors"


def test_finished_jobs_of_old_refits_are_left_to_their_ttl() -> None:
    w = world(jobs=[job("old", OLD, uid="old", state="Complete")], deployment=deployment())
    assert w.actions() == [CreateJob()]


def test_a_passed_refit_is_rolled_out() -> None:
    w = world(jobs=finished_job(), pods=[pod("p", message=passed().to_json())], deployment=deployment())
    assert w.assessment().step is Step.NEEDS_ROLLOUT
    (action,) = w.actions()
    assert isinstance(action, RollOut) and action.key == KEY and action.engine.uri == PUBLISHED


def test_a_failed_verification_touches_nothing() -> None:
    pods = [pod("p", exit_code=2, message=failed_verification().to_json())]
    w = world(
        jobs=[job(JOB, KEY, state="Failed", reason="PodFailurePolicy")], pods=pods, deployment=deployment()
    )
    assert w.assessment().step is Step.VERIFICATION_FAILED and w.actions() == []


def test_a_job_that_failed_without_a_result_is_a_refit_failure() -> None:
    pods = [pod("p", exit_code=1, message="Traceback: boom")]
    jobs = [
        job(
            JOB,
            KEY,
            state="Failed",
            reason="BackoffLimitExceeded",
            message="Job has reached the specified backoff limit",
        )
    ]
    w = world(jobs=jobs, pods=pods, deployment=deployment())
    assessment = w.assessment()
    assert assessment.step is Step.REFIT_FAILED and w.actions() == []
    assert assessment.record is not None and "BackoffLimitExceeded" in assessment.record.message
    assert "Traceback: boom" in assessment.record.message


def test_a_passed_refit_waits_for_a_missing_deployment() -> None:
    w = world(jobs=finished_job(), pods=[pod("p", message=passed().to_json())], deployment=None)
    assert w.assessment().step is Step.NO_DEPLOYMENT and w.actions() == []


def test_the_recorded_result_outlives_the_job() -> None:
    record = LastRefit(
        key=KEY,
        job=JOB,
        checkpoint=Digest(uri="c"),
        outcome=RefitOutcome.PASSED,
        engine=Digest(uri=PUBLISHED),
    )
    w = world(status=TRTModelStatus(last_refit=record), deployment=deployment())
    (action,) = w.actions()
    assert isinstance(action, RollOut) and action.engine.uri == PUBLISHED


def test_a_job_deleted_before_its_result_was_read_is_said_and_retried_after_a_backoff() -> None:
    record = LastRefit(key=KEY, job=JOB, checkpoint=Digest(uri="c"), outcome=RefitOutcome.RUNNING)
    w = world(status=TRTModelStatus(last_refit=record), deployment=deployment())
    assessment = w.assessment()
    assert assessment.step is Step.RETRY_SCHEDULED and w.actions() == []
    assert assessment.record is not None and assessment.record.failure is not None
    assert assessment.record.failure.reason == "ResultLost"
    assert f"{JOB} was deleted before its result was read" in assessment.record.message
    later = world(status=TRTModelStatus(last_refit=assessment.record), deployment=deployment())
    assert later.assessment().step is Step.RETRY_SCHEDULED  # at NOW the backoff has not passed
    due = assess(
        later.desired, later.observed, later.model.status.last_refit, now=NOW + timedelta(seconds=11)
    )
    assert due.step is Step.NEEDS_JOB


def test_steps_of_the_rollout() -> None:
    assert world(deployment=deployment(key=KEY)).assessment().step is Step.READY
    assert world(deployment=deployment(key=KEY, updated=1)).assessment().step is Step.ROLLING_OUT
    failed = world(deployment=deployment(key=KEY, updated=1, deadline_exceeded=True))
    assert failed.assessment().step is Step.ROLLOUT_FAILED


def _rolling_out() -> TRTModelStatus:
    return TRTModelStatus(
        serving=ServingStatus(engine=Digest(uri="s3://models/resnet50/engine.ep"), refit_key=OLD),
        last_refit=LastRefit(
            key=KEY,
            job=JOB,
            checkpoint=Digest(uri="c"),
            outcome=RefitOutcome.PASSED,
            engine=Digest(uri=PUBLISHED),
            rollout=RolloutStatus(
                deployment="resnet50-server", outcome=RolloutOutcome.ROLLING_OUT, started_at=NOW
            ),
        ),
    )


def test_a_failed_rollout_this_operator_started_is_reverted() -> None:
    w = world(status=_rolling_out(), deployment=deployment(key=KEY, updated=1, deadline_exceeded=True))
    (action,) = w.actions()
    assert isinstance(action, Revert) and action.failed_key == KEY
    assert action.to.engine.uri == "s3://models/resnet50/engine.ep"


def test_a_stalled_rollout_of_an_engine_that_already_served_is_not_reverted() -> None:
    status = _rolling_out().model_copy(
        update={"serving": ServingStatus(engine=Digest(uri=PUBLISHED), refit_key=KEY)}
    )
    w = world(status=status, deployment=deployment(key=KEY, updated=1, deadline_exceeded=True))
    assert w.assessment().step is Step.ROLLOUT_FAILED and w.actions() == []


def test_a_reverted_refit_is_not_rolled_out_again() -> None:
    w = world(
        jobs=finished_job(),
        pods=[pod("p", message=passed().to_json())],
        deployment=deployment(key=OLD, reverted=KEY),
    )
    assert w.assessment().step is Step.REVERTED and w.actions() == []


def test_paused_plans_nothing() -> None:
    w = world({"paused": True}, jobs=[job("old", OLD, uid="old")], deployment=deployment())
    assert w.assessment().step is Step.NEEDS_JOB and w.actions() == []
