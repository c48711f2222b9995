"""How the desired refit went: one `LastRefit` from the refit Job, its pod's result and the record already in
status (which outlives the Job: finished Jobs are deleted after their TTL)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from trtrefit.api.result import Outcome, RefitResult, Verification
from trtrefit.api.status import Digest, LastRefit, RefitOutcome, VerificationSummary
from trtrefit.controller.desired import DesiredRefit
from trtrefit.controller.observe import JobState, JobView, PodProgress, PodReport

SHA256 = re.compile(r"[0-9a-f]{64}")
TERMINAL = (RefitOutcome.PASSED, RefitOutcome.VERIFICATION_FAILED, RefitOutcome.FAILED)


@dataclass(frozen=True)
class RefitObservation:
    """The desired refit's Job (if any) and what its pods say."""

    job: JobView | None
    report: PodReport | None = None
    progress: PodProgress | None = None


def desired_job(jobs: Sequence[JobView], key: str) -> JobView | None:
    """The refit Job of this key that is not being deleted."""
    return next((job for job in jobs if job.key == key and not job.deleting), None)


def needs_pods(job: JobView | None, previous: LastRefit | None, key: str) -> bool:
    """Whether the pods must be read: the Job is running (for progress) or ended and not yet recorded."""
    if job is None:
        return False
    return not (previous is not None and previous.key == key and previous.outcome in TERMINAL)


def refit_record(
    desired: DesiredRefit, seen: RefitObservation, previous: LastRefit | None
) -> LastRefit | None:
    """The LastRefit of the desired refit, or None when it has not started (and none is recorded)."""
    if previous is not None and previous.key == desired.key and previous.outcome in TERMINAL:
        return previous  # the durable record; the Job may be gone
    job = seen.job
    if job is None:
        return previous if previous is not None and previous.key == desired.key else None
    base = LastRefit(
        key=desired.key,
        job=job.name,
        checkpoint=desired.checkpoint,
        outcome=RefitOutcome.RUNNING,
        started_at=job.started_at,
        message=seen.progress.message if seen.progress else "",
    )
    if job.state is JobState.RUNNING:
        return base
    finished = job.finished_at or (seen.report.finished_at if seen.report else None)
    seconds = (finished - job.started_at).total_seconds() if finished and job.started_at else None
    ended = base.model_copy(update={"finished_at": finished, "seconds": seconds, "message": ""})
    return _with_result(ended, job, seen.report, desired.publish)


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
