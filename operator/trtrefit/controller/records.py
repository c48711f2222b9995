"""How the desired refit went: one `LastRefit` from the refit Job, its pod's result and the record already in
status (which outlives the Job: finished Jobs are deleted after their TTL)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from trtrefit.api.result import Outcome, RefitResult, Verification
from trtrefit.api.status import (
    Digest,
    FailureKind,
    LastRefit,
    RefitFailure,
    RefitOutcome,
    VerificationSummary,
)
from trtrefit.controller.desired import DesiredRefit
from trtrefit.controller.views import JobState, JobView, PodProgress, PodReport

SHA256 = re.compile(r"[0-9a-f]{64}")
TERMINAL = (RefitOutcome.PASSED, RefitOutcome.VERIFICATION_FAILED, RefitOutcome.FAILED)
FIRST_RETRY = timedelta(seconds=10)  # a transient failure's first retry; doubled each attempt
MAX_RETRY = timedelta(minutes=10)

# Pod reasons (status.reason) of pods the platform took away; another Job may well succeed.
_TRANSIENT_POD_REASONS = {
    "Evicted": "Evicted",
    "NodeLost": "NodeLost",
    "Terminated": "NodeLost",  # set by the pod GC when a node is gone
    "UnexpectedAdmissionError": "Evicted",
    "Preempting": "Evicted",
}
WAITS_FOR_POD_FIX = (
    "a change to spec.refitJob (image, resources, activeDeadlineSeconds, env/envFrom credentials) or a new "
    "value of the trtrefit.dev/retry annotation"
)
WAITS_FOR_NEW_INPUT = (
    "a new spec.checkpoint, engine or verify settings, or a new value of the trtrefit.dev/retry annotation"
)


@dataclass(frozen=True)
class RefitEvidence:
    """The desired refit's Job (if any), what its pods say, and whether a Job of it is being deleted."""

    job: JobView | None
    report: PodReport | None = None
    progress: PodProgress | None = None
    replacing: bool = False


def desired_job(jobs: Sequence[JobView], key: str) -> JobView | None:
    """The newest refit Job of this key that is not being deleted."""
    live = [job for job in jobs if job.key == key and not job.deleting]
    return max(live, key=lambda job: job.attempt, default=None)


def needs_pods(job: JobView | None, previous: LastRefit | None, key: str) -> bool:
    """Whether the pods must be read: the Job is running (for progress) or ended and not yet recorded."""
    if job is None:
        return False
    return not _recorded(previous, key, job)


def _recorded(previous: LastRefit | None, key: str, job: JobView | None) -> bool:
    """The record in status already holds this key's outcome, and no newer attempt has started."""
    if previous is None or previous.key != key or previous.outcome not in TERMINAL:
        return False
    return job is None or job.attempt <= (previous.attempts or 1)


def retry_delay(attempts: int) -> timedelta:
    """Capped exponential backoff: 10 s after the first failed attempt, doubling, at most 10 minutes."""
    doubled: timedelta = FIRST_RETRY * float(2 ** min(max(attempts - 1, 0), 16))
    return min(MAX_RETRY, doubled)


def refit_record(
    desired: DesiredRefit, seen: RefitEvidence, previous: LastRefit | None, now: datetime | None = None
) -> LastRefit | None:
    """The LastRefit of the desired refit, or None when it has not started (and none is recorded)."""
    job = seen.job
    if _recorded(previous, desired.key, job):
        return previous  # the durable record; the Job may be gone
    if job is None:
        mine = previous if previous is not None and previous.key == desired.key else None
        if mine is not None and mine.outcome is RefitOutcome.RUNNING and mine.job and not seen.replacing:
            return _lost(mine, now)
        return mine
    base = LastRefit(
        key=desired.key,
        job=job.name,
        checkpoint=desired.checkpoint,
        outcome=RefitOutcome.RUNNING,
        started_at=job.started_at,
        message=seen.progress.message if seen.progress else "",
        attempts=job.attempt,
        refit_job_digest=job.refit_job_digest or None,
        retry_token=job.retry_token,
    )
    if job.state is JobState.RUNNING:
        return base
    finished = job.finished_at or (seen.report.finished_at if seen.report else None)
    seconds = (finished - job.started_at).total_seconds() if finished and job.started_at else None
    ended = base.model_copy(update={"finished_at": finished, "seconds": seconds, "message": ""})
    record = _with_result(ended, job, seen.report, desired.publish)
    if record.outcome is RefitOutcome.PASSED:
        return record
    failure = classify(job, seen.report, record)
    if failure.kind is FailureKind.TRANSIENT:
        since = finished or now
        retry_at = since + retry_delay(record.attempts or 1) if since is not None else None
        failure = failure.model_copy(update={"retry_at": retry_at})
    return record.model_copy(update={"failure": failure})


def _lost(running: LastRefit, now: datetime | None) -> LastRefit:
    """The Job of a running refit is gone before its result was read (deleted by hand or by its TTL while
    the operator was away): say so, and run it again after the backoff."""
    retry_at = now + retry_delay(running.attempts or 1) if now is not None else None
    return running.model_copy(
        update={
            "outcome": RefitOutcome.FAILED,
            "finished_at": running.finished_at or now,
            "message": f"refit Job {running.job} was deleted before its result was read",
            "failure": RefitFailure(kind=FailureKind.TRANSIENT, reason="ResultLost", retry_at=retry_at),
        }
    )


def classify(job: JobView, report: PodReport | None, record: LastRefit) -> RefitFailure:  # noqa: PLR0911
    """Transient (the platform took the pod away, storage was unreachable) or permanent (the same Job would
    fail the same way), with what can fix a permanent one."""
    result = report.result if report is not None else None

    def permanent(reason: str, waits_for: str = WAITS_FOR_POD_FIX) -> RefitFailure:
        return RefitFailure(kind=FailureKind.PERMANENT, reason=reason, waits_for=waits_for)

    if record.outcome is RefitOutcome.VERIFICATION_FAILED:
        return permanent("VerificationFailed", WAITS_FOR_NEW_INPUT)
    if result is not None and result.outcome is Outcome.PASSED:
        return permanent("ResultRefused", WAITS_FOR_NEW_INPUT)  # a result we cannot trust
    if result is not None and result.outcome is Outcome.ERROR:
        if result.transient:
            return RefitFailure(kind=FailureKind.TRANSIENT, reason="StorageUnavailable")
        return permanent("WorkerError")
    if job.reason == "DeadlineExceeded":
        return permanent("DeadlineExceeded")
    if report is None:
        return RefitFailure(kind=FailureKind.TRANSIENT, reason="PodDeleted")  # no pod left a result
    return _pod_failure(report)


def _pod_failure(report: PodReport) -> RefitFailure:
    """A pod that ended without a result: taken away by the platform, killed, or crashed."""
    if report.reason == "OOMKilled" or (
        report.exit_code == 137 and not report.disrupted and report.reason not in _TRANSIENT_POD_REASONS
    ):
        return RefitFailure(kind=FailureKind.PERMANENT, reason="OOMKilled", waits_for=WAITS_FOR_POD_FIX)
    if report.disrupted or report.reason in _TRANSIENT_POD_REASONS:
        reason = _TRANSIENT_POD_REASONS.get(report.reason, "Evicted")
        return RefitFailure(kind=FailureKind.TRANSIENT, reason=reason)
    return RefitFailure(kind=FailureKind.PERMANENT, reason="PodFailed", waits_for=WAITS_FOR_POD_FIX)


def _with_result(ended: LastRefit, job: JobView, report: PodReport | None, publish: str | None) -> LastRefit:
    result = report.result if report else None
    if result is None:
        detail = report.summary if report else "no pod result"
        why = f"refit Job {job.name} {'failed' if job.state is JobState.FAILED else 'succeeded'}"
        if job.reason:
            why += f" ({job.reason}: {job.message})" if job.message else f" ({job.reason})"
        return ended.model_copy(update={"outcome": RefitOutcome.FAILED, "message": f"{why}; {detail}"})
    update = _from_result(result)
    if update["outcome"] is RefitOutcome.PASSED:
        untrusted = unpublished_engine(result, publish)
        if job.state is not JobState.SUCCEEDED:
            untrusted = f"the Job {job.name} failed, yet its result says passed"
        if untrusted:
            update |= {
                "outcome": RefitOutcome.FAILED,
                "engine": None,
                "message": f"result refused: {untrusted}",
            }
    return ended.model_copy(update=update)


def unpublished_engine(result: RefitResult, publish: str | None) -> str:
    """Why a passed result's engine cannot be what the worker published under `publish`, or "" when it can:
    it must lie directly under that prefix and be named by its 64-hex sha256 (`<prefix>/<sha256>.ep`)."""
    engine = result.engine
    if engine is None:
        return "the refit passed but its result names no engine"
    if not SHA256.fullmatch(engine.sha256):
        return f"engine sha256 {engine.sha256[:80]!r} is not 64 lowercase hex digits"
    if publish is None:
        return "the spec names no publish.uri, so no published engine can be trusted"
    expected = f"{publish.rstrip('/')}/{engine.sha256}.ep"
    if engine.uri != expected:
        return (
            f"engine {engine.uri[:200]!r} is not {expected!r} (under spec.publish.uri, named by its digest)"
        )
    return ""


# How a worker's or a serving pod's outcome shows in status.
REFIT_OUTCOMES = {
    Outcome.PASSED: RefitOutcome.PASSED,
    Outcome.VERIFICATION_FAILED: RefitOutcome.VERIFICATION_FAILED,
    Outcome.ERROR: RefitOutcome.FAILED,
    Outcome.SUPERSEDED: RefitOutcome.FAILED,  # a serving pod's answer, never a Job's
}


def _from_result(result: RefitResult) -> dict[str, object]:
    return {
        "outcome": REFIT_OUTCOMES[result.outcome],
        "message": result.message,
        "backend": result.backend,
        "path": result.path.value if result.path else None,
        "engine": Digest(uri=result.engine.uri, sha256=result.engine.sha256) if result.engine else None,
        "verification": summary_of(result.verification),
    }


def summary_of(verification: Verification | None) -> VerificationSummary | None:
    """The worst-case numbers of a result's verification, as status shows them."""
    if verification is None:
        return None
    return VerificationSummary(
        passed=verification.passed,
        max_abs_error=verification.max_abs_error,
        max_rel_error=verification.max_rel_error,
        min_cosine_similarity=verification.min_cosine_similarity,
    )
