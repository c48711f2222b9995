"""`TRTModel.status`: kstatus conditions, the phase, what is serving, the last refit and the history.

Only the controller's status function fills these; every field here is in the CRD's schema, so nothing the
operator writes is pruned by the API server.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from kube_custom_resource import schema
from pydantic import Field

from trtrefit.api.base import SHA256_PATTERN, Model, list_map

HISTORY_LIMIT = 10


class Phase(StrEnum):
    """One word for where the TRTModel stands."""

    PENDING = "Pending"
    REFITTING = "Refitting"
    ROLLING_OUT = "RollingOut"
    READY = "Ready"
    FAILED = "Failed"


class ConditionType(StrEnum):
    """The condition types the operator maintains (kstatus: Ready, Reconciling, Stalled)."""

    READY = "Ready"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"
    VERIFIED = "Verified"
    ROLLED_OUT = "RolledOut"


class ConditionStatus(StrEnum):
    """Whether a condition holds."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(Model):
    """One observation in the shape of metav1.Condition."""

    type: str = Field(description="Ready, Reconciling, Stalled, Verified or RolledOut.", max_length=316)
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        description="Why the condition has its status, in CamelCase.",
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        max_length=1024,
    )
    message: str = Field(default="", description="What happened, for humans.", max_length=32768)
    observed_generation: int = Field(description="The metadata.generation this condition describes.", ge=0)
    last_transition_time: datetime = Field(description="When the status last changed.")


class Digest(Model):
    """A file and, where known, its SHA-256."""

    uri: str = Field(description="Where the file is.")
    sha256: schema.Optional[str] = Field(
        default=None, description="Its SHA-256, 64 lowercase hex digits.", pattern=SHA256_PATTERN
    )


class ServingStatus(Model):
    """The engine the Deployment's pods run, seen after its rollout completed (Restart), or the checkpoint
    every ready pod reports serving, verified (InPlace)."""

    engine: Digest = Field(description="The engine the serving pods load.")
    checkpoint: schema.Optional[Digest] = Field(
        default=None,
        description="The checkpoint refitted into it; unset for an engine the operator did not refit.",
    )
    refit_key: schema.Optional[str] = Field(default=None, description="The refit that produced it.")
    since: schema.Optional[datetime] = Field(
        default=None, description="When the operator first saw it serving."
    )


class RefitOutcome(StrEnum):
    """How the refit Job of the desired refit ended (Running while it has not)."""

    RUNNING = "Running"
    PASSED = "Passed"
    VERIFICATION_FAILED = "VerificationFailed"
    FAILED = "Failed"


class FailureKind(StrEnum):
    """Whether a failed refit is retried on its own (Transient) or waits for a change (Permanent)."""

    TRANSIENT = "Transient"
    PERMANENT = "Permanent"


class RefitFailure(Model):
    """Why a refit failed and what retries it: a transient failure after a capped exponential backoff, a
    permanent one once what can fix it changes (spec.refitJob, or the trtrefit.dev/retry annotation)."""

    kind: FailureKind = Field(description="Transient (retried after a backoff) or Permanent (waits).")
    reason: str = Field(
        description=(
            "CamelCase: Evicted, NodeLost, PodDeleted, ResultLost, StorageUnavailable (transient); "
            "VerificationFailed, WorkerError, OOMKilled, DeadlineExceeded, PodFailed, ResultRefused "
            "(permanent)."
        ),
        pattern=r"^[A-Za-z][A-Za-z0-9]*$",
        max_length=64,
    )
    retry_at: schema.Optional[datetime] = Field(
        default=None, description="Transient: when the next attempt starts."
    )
    waits_for: str = Field(default="", description="Permanent: what a human can change to retry it.")


class VerificationSummary(Model):
    """The worst case over all outputs, measured by the worker against the PyTorch reference."""

    passed: bool = Field(description="Every output met rtol, atol and minCosineSimilarity.")
    max_abs_error: float = Field(description="Largest absolute error of any output element.")
    max_rel_error: float = Field(description="Largest relative error of any output element.")
    min_cosine_similarity: float = Field(description="Smallest cosine similarity of any output.")


class RolloutOutcome(StrEnum):
    """How the rollout of a refitted engine went."""

    ROLLING_OUT = "RollingOut"
    COMPLETE = "Complete"
    REVERTED = "Reverted"
    FAILED = "Failed"


class RolloutStatus(Model):
    """The rollout of the refit to the serving Deployment: its pod template patched (Restart), or its ready
    pods refitted in place after the canary (InPlace)."""

    deployment: str = Field(description="The serving Deployment.")
    outcome: RolloutOutcome = Field(description="RollingOut, Complete, Reverted or Failed.")
    started_at: datetime = Field(
        description="When the operator patched the pod template, or the canary passed (InPlace)."
    )
    finished_at: schema.Optional[datetime] = Field(default=None, description="When the rollout ended.")
    seconds: schema.Optional[float] = Field(default=None, description="finishedAt - startedAt.")
    message: str = Field(default="", description="What happened, for humans.")


class LastRefit(Model):
    """The most recent refit for the desired spec: its Job (Restart) or canary pod (InPlace), result, numbers
    and rollout."""

    key: str = Field(
        description=(
            "Digest of the desired refit (engine, source, checkpoint, verify settings); the Job name ends "
            "with its first 10 characters."
        )
    )
    job: schema.Optional[str] = Field(
        default=None, description="Name of the refit Job (Restart); unset for an InPlace refit."
    )
    canary: schema.Optional[str] = Field(
        default=None, description="InPlace: the serving pod that refitted and verified the checkpoint first."
    )
    checkpoint: Digest = Field(description="The checkpoint refitted.")
    outcome: RefitOutcome = Field(description="Running, Passed, VerificationFailed or Failed.")
    started_at: schema.Optional[datetime] = Field(
        default=None, description="When the refit Job started, or the canary's refit request was sent."
    )
    finished_at: schema.Optional[datetime] = Field(
        default=None, description="When the refit Job ended, or the canary answered."
    )
    seconds: schema.Optional[float] = Field(
        default=None, description="Duration of the refit Job, or of the canary's refit request."
    )
    engine: schema.Optional[Digest] = Field(
        default=None, description="The refitted program the worker published."
    )
    verification: schema.Optional[VerificationSummary] = Field(default=None, description="Measured errors.")
    backend: schema.Optional[str] = Field(default=None, description="Worker backend: tensorrt or exported.")
    path: schema.Optional[str] = Field(
        default=None, description="Refit code path: fast, fallback or exported."
    )
    message: str = Field(
        default="", description="The worker's (or canary's) one-line message, or why the refit failed."
    )
    rollout: schema.Optional[RolloutStatus] = Field(default=None, description="The rollout of this refit.")
    attempts: schema.Optional[int] = Field(
        default=None,
        description="Restart: how many refit Jobs this refit has started, retries included.",
        ge=1,
    )
    failure: schema.Optional[RefitFailure] = Field(
        default=None, description="Why the refit failed and what retries it."
    )
    refit_job_digest: schema.Optional[str] = Field(
        default=None,
        description=(
            "Digest of spec.refitJob and the worker image the Job ran with: a change retries a failure of "
            "the pod (image, memory, deadline, credentials)."
        ),
        max_length=64,
    )
    retry_token: schema.Optional[str] = Field(
        default=None,
        description="The trtrefit.dev/retry annotation when the Job started: a new value retries a failure.",
        max_length=256,
    )


class PodCounts(Model):
    """InPlace: the serving pods as they report themselves (GET .../trtrefit on each ready pod)."""

    ready: int = Field(description="Ready pods of the serving Deployment.", ge=0)
    current: int = Field(description="Ready pods that serve spec.checkpoint, verified.", ge=0)
    summary: str = Field(description="current/ready, e.g. 3/3, for `kubectl get`.", max_length=32)


class HistoryEntry(Model):
    """An engine that served before the current one."""

    engine: Digest = Field(description="The engine.")
    checkpoint: schema.Optional[Digest] = Field(default=None, description="The checkpoint refitted into it.")
    since: schema.Optional[datetime] = Field(default=None, description="When it started serving.")
    until: datetime = Field(description="When it stopped serving.")


class TRTModelStatus(Model):
    """What the operator observed. The conditions follow kstatus, so Flux and Argo CD can wait on them."""

    observed_generation: schema.Optional[int] = Field(
        default=None, description="The metadata.generation this status describes.", ge=0
    )
    phase: schema.Optional[Phase] = Field(
        default=None, description="Pending, Refitting, RollingOut, Ready or Failed."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Reconciling, Stalled, Verified and RolledOut.",
        max_length=16,
        json_schema_extra=list_map("type"),
    )
    serving: schema.Optional[ServingStatus] = Field(default=None, description="What the Deployment serves.")
    pods: schema.Optional[PodCounts] = Field(
        default=None, description="InPlace: how many ready pods serve spec.checkpoint."
    )
    last_refit: schema.Optional[LastRefit] = Field(default=None, description="The most recent refit.")
    history: list[HistoryEntry] = Field(
        default_factory=list,
        description=f"Engines that served before, newest first, at most {HISTORY_LIMIT}, for rollback.",
        max_length=HISTORY_LIMIT,
    )

    def condition(self, kind: ConditionType) -> Condition | None:
        """The condition of this type, if present."""
        return next((c for c in self.conditions if c.type == kind), None)


def history_after(
    history: list[HistoryEntry], before: ServingStatus | None, after: ServingStatus | None, now: datetime
) -> list[HistoryEntry]:
    """status.history once `after` replaced `before` (unchanged when nothing new serves), newest first, for
    rollback; both strategies keep it this way."""
    if before is None or after is None:
        return history
    if (before.engine, before.checkpoint) == (after.engine, after.checkpoint):
        return history
    left = HistoryEntry(engine=before.engine, checkpoint=before.checkpoint, since=before.since, until=now)
    return [left, *history][:HISTORY_LIMIT]
