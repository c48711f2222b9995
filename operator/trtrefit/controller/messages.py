"""The human sentences of status and Events: one per step, each naming the objects and numbers involved."""

from __future__ import annotations

from trtrefit.api.spec import TRTModelSpec
from trtrefit.api.status import LastRefit, ServingStatus
from trtrefit.controller.assess import Observed, Step
from trtrefit.controller.config import WORKER_IMAGE_ENV
from trtrefit.controller.desired import DesiredRefit


def numbers(record: LastRefit, spec: TRTModelSpec) -> str:
    """`max abs error 0.0012 (atol 0.01), ...`: the measured errors next to their tolerances."""
    v = record.verification
    if v is None:
        return "no verification numbers"
    tol = spec.verify
    return (
        f"max abs error {v.max_abs_error:.3g} (atol {tol.atol:g}), max rel error {v.max_rel_error:.3g} "
        f"(rtol {tol.rtol:g}), min cosine similarity {v.min_cosine_similarity:.6g} "
        f"(min {tol.min_cosine_similarity:g})"
    )


def verified_message(record: LastRefit | None, spec: TRTModelSpec) -> str:
    if record is None or record.verification is None:
        return "the serving engine was verified before it rolled out"
    verdict = "passed" if record.verification.passed else "failed"
    return f"verification {verdict}: {numbers(record, spec)}"


def _engine(record: LastRefit | None) -> str:
    return record.engine.uri if record is not None and record.engine is not None else "the refitted engine"


def step_message(
    step: Step,
    *,
    spec: TRTModelSpec,
    desired: DesiredRefit,
    record: LastRefit | None,
    observed: Observed,
    serving: ServingStatus | None,
) -> str:
    """One sentence saying where the desired refit stands and, when stuck, what a human can do."""
    checkpoint = desired.checkpoint.uri
    deployment = spec.serving.deployment_name
    job = record.job if record is not None else ""
    view = observed.deployment
    detail = f": {record.message}" if record is not None and record.message else ""
    failure = record.failure if record is not None else None
    waits = f"; it runs again on {failure.waits_for}" if failure is not None and failure.waits_for else ""
    attempt = (record.attempts or 1) + 1 if record is not None else 1
    retry_at = failure.retry_at.isoformat() if failure is not None and failure.retry_at else "once it is due"
    api = observed.api_error.text() if observed.api_error is not None else ""
    queued = observed.refit.job
    queue = f"its queue {queued.queue} admits it" if queued is not None and queued.queue else "it is resumed"
    messages = {
        Step.NEEDS_JOB: f"refit of checkpoint {checkpoint} not started yet",
        Step.NO_WORKER_IMAGE: (
            f"no worker image for the refit of checkpoint {checkpoint}: set spec.refitJob.image or the "
            f"operator's {WORKER_IMAGE_ENV}"
        ),
        Step.JOB_NOT_ALLOWED: f"no refit Job for checkpoint {checkpoint}: {observed.not_allowed}",
        Step.JOB_BLOCKED: f"refit of checkpoint {checkpoint} waits: {observed.job_blocked}",
        Step.JOB_REFUSED: f"the API server refused the refit Job: {observed.job_refused}",
        Step.API_DENIED: (
            f"{api}; a human must act (RBAC, a ResourceQuota or an admission policy); retried with backoff"
        ),
        Step.API_FAILED: f"{api}; retried with backoff",
        Step.QUEUED: (
            f"refit Job {queued.name if queued else job} is queued: suspended (spec.suspend) until {queue}"
        ),
        Step.JOB_OUTDATED: (
            f"refit Job {queued.name if queued else job} was built from an earlier spec.refitJob or worker "
            "image; replacing it"
        ),
        Step.REFITTING: f"refit Job {job} is running for checkpoint {checkpoint}{detail}",
        Step.RETRY_SCHEDULED: (
            f"refit Job {job} for checkpoint {checkpoint} failed "
            f"({failure.reason if failure else 'Unknown'}{detail}); attempt {attempt} starts at {retry_at}"
        ),
        Step.VERIFICATION_FAILED: (
            f"checkpoint {checkpoint} failed verification ({numbers(record, spec) if record else ''}); "
            f"serving is untouched{waits}"
        ),
        Step.REFIT_FAILED: (
            f"refit Job {job} for checkpoint {checkpoint} failed{detail}; serving untouched{waits}"
        ),
        Step.NO_DEPLOYMENT: (
            f"Deployment {deployment} not found; verified engine {_engine(record)} waits for it to exist"
        ),
        Step.NO_CONTAINER: (
            f"cannot patch Deployment {deployment}: {view.container_problem if view else 'not found'}"
        ),
        Step.NEEDS_ROLLOUT: f"verified engine {_engine(record)} waits to roll out to Deployment {deployment}",
        Step.ROLLING_OUT: f"rolling out engine {_engine(record)}: {view.rollout_message() if view else ''}",
        Step.ROLLOUT_FAILED: (
            f"rollout of engine {_engine(record)} failed ({view.rollout_message() if view else ''}); "
            "no earlier engine to revert to"
        ),
        Step.REVERTED: (
            f"rollout of engine {_engine(record)} to Deployment {deployment} failed; reverted to engine "
            f"{serving.engine.uri if serving else 'served before'}"
        ),
        Step.READY: (
            f"Deployment {deployment} serves engine {view.engine_uri if view else ''} refitted from "
            f"checkpoint {checkpoint}"
        ),
    }
    return messages[step]
