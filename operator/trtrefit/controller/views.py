"""Pure readers of the child objects as the API server returns them (plain dicts, camelCase): the refit
Jobs, their pods' results, and the serving Deployment. Nothing here calls the API."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from trtrefit.api.result import RefitResult
from trtrefit.api.spec import ServingSpec
from trtrefit.controller.naming import (
    ATTEMPT_ANNOTATION,
    CHECKPOINT_ANNOTATION,
    CHECKPOINT_SHA256_ANNOTATION,
    ENGINE_SHA256_ANNOTATION,
    KUEUE_QUEUE_LABEL,
    MODEL_ANNOTATION,
    REFIT_JOB_DIGEST_ANNOTATION,
    REFIT_KEY_ANNOTATION,
    REFIT_KEY_LABEL,
    RETRY_TOKEN_ANNOTATION,
    REVERTED_ANNOTATION,
    WORKER_CONTAINER,
)

Obj = Mapping[str, Any]
MAX_MESSAGE = 512


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 timestamp from the API (`2026-01-02T03:04:05Z`), or None."""
    return datetime.fromisoformat(text) if text else None


def _conditions(obj: Obj) -> dict[str, Obj]:
    return {c["type"]: c for c in obj.get("status", {}).get("conditions") or []}


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """The text squeezed onto one line and cut to `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class JobState(StrEnum):
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class JobView:
    """A refit Job, reduced to what the reconcile pass needs."""

    name: str
    uid: str
    key: str
    state: JobState
    deleting: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None
    reason: str = ""  # why a Job failed: BackoffLimitExceeded, DeadlineExceeded, PodFailurePolicy
    message: str = ""
    attempt: int = 1  # the how-manieth Job of its refit
    refit_job_digest: str = ""  # of the spec.refitJob (and image) it was built from
    retry_token: str | None = None  # the model's retry annotation when it was created
    suspended: bool = False  # spec.suspend: a queue (Kueue) has not admitted it yet
    queue: str = ""  # its Kueue queue-name label

    @classmethod
    def of(cls, job: Obj) -> JobView:
        meta, status = job["metadata"], job.get("status", {})
        annotations, labels = meta.get("annotations") or {}, meta.get("labels") or {}
        attempt = str(annotations.get(ATTEMPT_ANNOTATION, "1"))
        conditions = _conditions(job)
        complete, failed = conditions.get("Complete", {}), conditions.get("Failed", {})
        if failed.get("status") == "True":
            state, ended = JobState.FAILED, failed
        elif complete.get("status") == "True":
            state, ended = JobState.SUCCEEDED, complete
        else:
            state, ended = JobState.RUNNING, {}
        return cls(
            name=meta["name"],
            uid=meta["uid"],
            key=(meta.get("labels") or {}).get(REFIT_KEY_LABEL, ""),
            state=state,
            deleting=meta.get("deletionTimestamp") is not None,
            started_at=parse_time(status.get("startTime") or meta.get("creationTimestamp")),
            finished_at=parse_time(status.get("completionTime") or ended.get("lastTransitionTime")),
            reason=ended.get("reason", "") if state is JobState.FAILED else "",
            message=one_line(ended.get("message", "")) if state is JobState.FAILED else "",
            attempt=int(attempt) if attempt.isdigit() and int(attempt) > 0 else 1,
            refit_job_digest=str(annotations.get(REFIT_JOB_DIGEST_ANNOTATION, "")),
            retry_token=annotations.get(RETRY_TOKEN_ANNOTATION),
            suspended=bool((job.get("spec") or {}).get("suspend")) and state is JobState.RUNNING,
            queue=str(labels.get(KUEUE_QUEUE_LABEL, "")),
        )


@dataclass(frozen=True)
class PodReport:
    """What the refit pod left behind: its exit code and termination message, parsed when it is a result."""

    pod: str
    exit_code: int
    finished_at: datetime | None
    raw_message: str
    result: RefitResult | None
    reason: str = ""  # the container's (OOMKilled, Error) or, when set, the pod's (Evicted, NodeLost)
    disrupted: bool = False  # the pod has a DisruptionTarget condition: evicted, preempted, node gone

    @property
    def summary(self) -> str:
        """The result's message, or the raw termination message (e.g. a log tail) on one line."""
        if self.result is not None and self.result.message:
            return one_line(self.result.message)
        return (
            one_line(self.raw_message) or f"pod {self.pod} exited with code {self.exit_code} and no message"
        )


@dataclass(frozen=True)
class PodProgress:
    """Why a running refit Job has not finished yet, when its pod says so (pulling, unschedulable)."""

    pod: str
    message: str


def _owned_by(pod: Obj, job_uid: str) -> bool:
    return any(ref.get("uid") == job_uid for ref in pod["metadata"].get("ownerReferences") or [])


def _terminated(pod: Obj) -> Obj | None:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        if status.get("name") == WORKER_CONTAINER:
            terminated: Obj | None = (status.get("state") or {}).get("terminated")
            return terminated
    return None


def _parse_result(message: str) -> RefitResult | None:
    try:
        return RefitResult.from_json(message.strip())
    except ValidationError:
        return None


def pod_report(pods: Sequence[Obj], job_uid: str) -> PodReport | None:
    """The result of the Job's most recently finished pod (a Job may retry its pod after errors)."""
    finished = [
        (pod, term) for pod in pods if _owned_by(pod, job_uid) and (term := _terminated(pod)) is not None
    ]
    if not finished:
        return None
    pod, term = max(finished, key=lambda item: item[1].get("finishedAt") or "")
    message = term.get("message") or ""
    disruption = _conditions(pod).get("DisruptionTarget", {})
    return PodReport(
        pod=pod["metadata"]["name"],
        exit_code=int(term.get("exitCode", -1)),
        finished_at=parse_time(term.get("finishedAt")),
        raw_message=message,
        result=_parse_result(message),
        reason=str(pod.get("status", {}).get("reason") or term.get("reason") or ""),
        disrupted=disruption.get("status") == "True",
    )


def pod_progress(pods: Sequence[Obj], job_uid: str) -> PodProgress | None:
    """A waiting container's reason (ImagePullBackOff, ...) or an unschedulable pod's message."""
    for pod in pods:
        if not _owned_by(pod, job_uid) or pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            continue
        name = pod["metadata"]["name"]
        for status in pod.get("status", {}).get("containerStatuses") or []:
            waiting = (status.get("state") or {}).get("waiting")
            if waiting and waiting.get("reason") not in (None, "ContainerCreating"):
                detail = f": {waiting['message']}" if waiting.get("message") else ""
                return PodProgress(name, one_line(f"{waiting['reason']}{detail}"))
        scheduled = _conditions(pod).get("PodScheduled", {})
        if scheduled.get("status") == "False":
            return PodProgress(
                name, one_line(f"{scheduled.get('reason', 'Unschedulable')}: {scheduled.get('message', '')}")
            )
    return None


@dataclass(frozen=True)
class ApiFailure:
    """An API request of this pass that the API server answered with an error status."""

    request: str  # `create job tiny-refit-0123456789`
    status: int
    reason: str  # the Status object's reason: Forbidden, TooManyRequests, InternalError, ...
    message: str

    @property
    def needs_human(self) -> bool:
        """401/403: RBAC, a ResourceQuota or an admission policy refused it."""
        return self.status in (401, 403)

    def text(self) -> str:
        return one_line(f"{self.request} failed: HTTP {self.status} {self.reason}: {self.message}")


class RolloutState(StrEnum):
    PROGRESSING = "Progressing"
    COMPLETE = "Complete"
    FAILED = "Failed"


@dataclass(frozen=True)
class DeploymentView:
    """The serving Deployment: what its pod template asks the pods to load, and how its rollout goes."""

    name: str
    resource_version: str
    generation: int
    container: str | None  # the container that loads the engine; None when it cannot be told
    container_problem: str  # why `container` is None
    engine_uri: str | None  # the engine env var's literal value
    engine_sha256: str | None
    refit_key: str | None
    checkpoint_uri: str | None
    checkpoint_sha256: str | None
    reverted_key: str | None
    claimed_by: str | None = None  # the trtrefit.dev/model annotation: the TRTModel this Deployment serves
    env_from_source: bool = False  # the engine env var currently comes from valueFrom
    replicas: int = 1
    observed_generation: int = 0
    updated: int = 0
    current: int = 0
    available: int = 0
    progress_deadline_exceeded: bool = False
    progress_message: str = field(default="", compare=False)

    @classmethod
    def of(cls, deployment: Obj, serving: ServingSpec) -> DeploymentView:
        meta, spec, status = deployment["metadata"], deployment["spec"], deployment.get("status", {})
        template = spec["template"]
        annotations = (template.get("metadata") or {}).get("annotations") or {}
        container, problem = _pick_container(template["spec"]["containers"], serving.container_name)
        env = {e["name"]: e for e in (container or {}).get("env") or []}
        engine_env = env.get(serving.engine_env_var, {})
        progressing = _conditions(deployment).get("Progressing", {})
        return cls(
            name=meta["name"],
            resource_version=meta.get("resourceVersion", ""),
            generation=int(meta.get("generation", 0)),
            container=container["name"] if container else None,
            container_problem=problem,
            engine_uri=engine_env.get("value"),
            engine_sha256=annotations.get(ENGINE_SHA256_ANNOTATION),
            refit_key=annotations.get(REFIT_KEY_ANNOTATION),
            checkpoint_uri=annotations.get(CHECKPOINT_ANNOTATION),
            checkpoint_sha256=annotations.get(CHECKPOINT_SHA256_ANNOTATION),
            reverted_key=(meta.get("annotations") or {}).get(REVERTED_ANNOTATION),
            claimed_by=(meta.get("annotations") or {}).get(MODEL_ANNOTATION),
            env_from_source="valueFrom" in engine_env,
            replicas=int(spec.get("replicas", 1)),
            observed_generation=int(status.get("observedGeneration", 0)),
            updated=int(status.get("updatedReplicas", 0)),
            current=int(status.get("replicas", 0)),
            available=int(status.get("availableReplicas", 0)),
            progress_deadline_exceeded=progressing.get("reason") == "ProgressDeadlineExceeded",
            progress_message=one_line(progressing.get("message", "")),
        )

    def rollout(self) -> RolloutState:
        """The state of the rollout of the current pod template, judged like `kubectl rollout status`."""
        if self.observed_generation < self.generation:
            return RolloutState.PROGRESSING
        if self.progress_deadline_exceeded:
            return RolloutState.FAILED
        if self.updated < self.replicas or self.current > self.updated or self.available < self.updated:
            return RolloutState.PROGRESSING
        return RolloutState.COMPLETE

    def rollout_message(self) -> str:
        """Rollout progress in the words of `kubectl rollout status`."""
        if self.observed_generation < self.generation:
            return f"waiting for Deployment {self.name} to observe its new pod template"
        if self.progress_deadline_exceeded:
            return f"Deployment {self.name} exceeded its progress deadline: {self.progress_message}"
        if self.updated < self.replicas:
            return f"{self.updated} of {self.replicas} replicas of Deployment {self.name} updated"
        if self.current > self.updated:
            return f"{self.current - self.updated} old replicas of Deployment {self.name} pending termination"
        if self.available < self.updated:
            return f"{self.available} of {self.updated} updated replicas of Deployment {self.name} available"
        return f"Deployment {self.name} rolled out to {self.updated} replicas"


def _pick_container(containers: Sequence[Obj], wanted: str | None) -> tuple[Obj | None, str]:
    if wanted is not None:
        found = next((c for c in containers if c["name"] == wanted), None)
        names = ", ".join(c["name"] for c in containers)
        return (found, "") if found else (None, f"it has no container named {wanted} (it has: {names})")
    if len(containers) == 1:
        return containers[0], ""
    return None, f"it has {len(containers)} containers: set spec.serving.containerName"
