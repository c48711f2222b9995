"""What retries a failed refit and what it waits for; a replaced outdated Job; a queued Job; API errors and
Deployment claims in one pass over the in-memory API (the integration tests use the real one)."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.unit.api.samples import body
from tests.unit.controller.objects import T1, deployment, failed_verification, job, pod
from tests.unit.controller.scenarios import NOW, key_of, world
from tests.unit.controller.test_reconcile_pass import CONFIG, MemoryCluster, run
from trtrefit.api.result import Outcome, RefitResult
from trtrefit.api.status import ConditionType, FailureKind, TRTModelStatus
from trtrefit.controller.assess import Step, assess
from trtrefit.controller.kube import KubeError, Obj
from trtrefit.controller.naming import (
    ATTEMPT_ANNOTATION,
    KUEUE_QUEUE_LABEL,
    MODEL_ANNOTATION,
    REFIT_JOB_DIGEST_ANNOTATION,
    RETRY_TOKEN_ANNOTATION,
)
from trtrefit.controller.plan import CreateJob, DeleteJob
from trtrefit.controller.reconcile import reconcile
from trtrefit.controller.records import retry_delay
from trtrefit.controller.runtime import Runtime
from trtrefit.controller.status import compute_status

KEY = key_of()
JOB = f"resnet50-refit-{KEY[:10]}"
DIGEST, NEW_DIGEST = "d" * 32, "f" * 32


def _job(state: str = "Failed", *, reason: str = "BackoffLimitExceeded", token: str | None = None) -> Obj:
    made = job(JOB, KEY, state=state, reason=reason)
    made["metadata"]["annotations"] = {ATTEMPT_ANNOTATION: "1", REFIT_JOB_DIGEST_ANNOTATION: DIGEST}
    if token is not None:
        made["metadata"]["annotations"][RETRY_TOKEN_ANNOTATION] = token
    return made


def _evicted() -> Obj:
    evicted = pod("p", exit_code=137, message="")
    evicted["status"]["reason"] = "Evicted"
    evicted["status"]["conditions"] = [{"type": "DisruptionTarget", "status": "True"}]
    return evicted


def _oom() -> Obj:
    killed = pod("p", exit_code=137)
    killed["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] = "OOMKilled"
    return killed


def _error(transient: bool | None = None) -> Obj:
    result = RefitResult(outcome=Outcome.ERROR, message="cannot read s3://ckpt: denied", transient=transient)
    return pod("p", exit_code=1, message=result.to_json())


@pytest.mark.parametrize(
    ("pods", "job_reason", "kind", "reason"),
    [
        ([_evicted()], "BackoffLimitExceeded", FailureKind.TRANSIENT, "Evicted"),
        ([], "BackoffLimitExceeded", FailureKind.TRANSIENT, "PodDeleted"),
        ([_error(transient=True)], "BackoffLimitExceeded", FailureKind.TRANSIENT, "StorageUnavailable"),
        ([_oom()], "BackoffLimitExceeded", FailureKind.PERMANENT, "OOMKilled"),
        ([], "DeadlineExceeded", FailureKind.PERMANENT, "DeadlineExceeded"),
        ([_error()], "BackoffLimitExceeded", FailureKind.PERMANENT, "WorkerError"),
        ([pod("p", exit_code=1, message="Traceback: boom")], "", FailureKind.PERMANENT, "PodFailed"),
        (
            [pod("p", exit_code=2, message=failed_verification().to_json())],
            "PodFailurePolicy",
            FailureKind.PERMANENT,
            "VerificationFailed",
        ),
    ],
)
def test_each_failure_is_classified(pods: list[Obj], job_reason: str, kind: FailureKind, reason: str) -> None:
    w = world(jobs=[_job(reason=job_reason)], pods=pods, deployment=deployment(), refit_job_digest=DIGEST)
    record = w.assessment().record
    assert record is not None and record.failure is not None
    assert (record.failure.kind, record.failure.reason) == (kind, reason)
    assert record.attempts == 1 and record.refit_job_digest == DIGEST
    if kind is FailureKind.TRANSIENT:
        assert record.failure.retry_at is not None and record.finished_at is not None
        assert record.failure.retry_at - record.finished_at == timedelta(seconds=10)
        soon = record.finished_at + timedelta(seconds=5)
        assert assess(w.desired, w.observed, None, now=soon).step is Step.RETRY_SCHEDULED
        assert w.assessment().step is Step.NEEDS_JOB  # NOW is long after the backoff
    else:
        assert record.failure.retry_at is None and "trtrefit.dev/retry" in record.failure.waits_for
        assert w.assessment().step in (Step.REFIT_FAILED, Step.VERIFICATION_FAILED)
        assert w.actions() == []


def test_backoff_doubles_and_is_capped() -> None:
    delays = [retry_delay(n).total_seconds() for n in (1, 2, 3, 7, 8, 50)]
    assert delays == [10, 20, 40, 600, 600, 600]


def _failed_status(pods: list[Obj], digest: str = DIGEST, token: str | None = None) -> TRTModelStatus:
    """The status a pass wrote after the first Job failed this way."""
    return world(
        jobs=[_job(token=token)], pods=pods, deployment=deployment(), refit_job_digest=digest
    ).status()


def test_a_transient_failure_runs_again_after_its_backoff_as_attempt_two() -> None:
    status = _failed_status([_evicted()])
    due = world(
        jobs=[_job()], pods=[_evicted()], status=status, deployment=deployment(), refit_job_digest=DIGEST
    )
    delete, create = due.actions()  # NOW is long after the backoff
    assert isinstance(delete, DeleteJob) and create == CreateJob(attempt=2)
    soon = datetime.fromisoformat(T1) + timedelta(seconds=5)
    waiting = assess(due.desired, due.observed, due.model.status.last_refit, now=soon)
    assert waiting.step is Step.RETRY_SCHEDULED
    status = compute_status(
        due.model.spec,
        generation=1,
        previous=due.model.status,
        desired=due.desired,
        assessment=waiting,
        observed=due.observed,
        now=soon,
    )
    assert status.phase == "Refitting"
    reconciling = status.condition(ConditionType.RECONCILING)
    assert reconciling is not None and reconciling.status == "True"
    assert "failed (Evicted" in reconciling.message and "attempt 2 starts at" in reconciling.message


def test_a_failure_of_the_pod_waits_for_spec_refit_job_and_then_replaces_the_job() -> None:
    status = _failed_status([_oom()])
    same = world(
        jobs=[_job()], pods=[_oom()], status=status, deployment=deployment(), refit_job_digest=DIGEST
    )
    assert same.assessment().step is Step.REFIT_FAILED and same.actions() == []
    changed = world(jobs=[_job()], status=status, deployment=deployment(), refit_job_digest=NEW_DIGEST)
    assert changed.assessment().step is Step.NEEDS_JOB
    delete, create = changed.actions()
    assert isinstance(delete, DeleteJob) and delete.job.name == JOB and "retried" in delete.replaced
    assert create == CreateJob(attempt=2)


def test_a_failed_verification_waits_for_the_retry_annotation_not_for_spec_refit_job() -> None:
    verified = [pod("p", exit_code=2, message=failed_verification().to_json())]
    status = _failed_status(verified)
    assert world(status=status, deployment=deployment(), refit_job_digest=NEW_DIGEST).actions() == []
    again = world(status=status, deployment=deployment(), refit_job_digest=DIGEST, retry_token="1")
    assert again.assessment().step is Step.NEEDS_JOB and again.actions() == [CreateJob(attempt=2)]
    # The next Job carries token "1": the same value does not retry a second failure.
    stamped = _failed_status(verified, token="1")
    assert (
        world(status=stamped, deployment=deployment(), refit_job_digest=DIGEST, retry_token="1").actions()
        == []
    )


def test_a_refit_job_change_leaves_a_successful_refit_alone() -> None:
    ready = world(deployment=deployment(key=KEY), refit_job_digest=NEW_DIGEST)
    assert ready.assessment().step is Step.READY and ready.actions() == []


def test_a_running_job_built_from_an_older_refit_job_is_replaced() -> None:
    w = world(jobs=[_job("Running", reason="")], deployment=deployment(), refit_job_digest=NEW_DIGEST)
    assert w.assessment().step is Step.JOB_OUTDATED
    delete, create = w.actions()
    assert (
        isinstance(delete, DeleteJob)
        and "spec.refitJob" in delete.replaced
        and create == CreateJob(attempt=2)
    )
    assert (
        world(jobs=[_job("Running", reason="")], refit_job_digest=DIGEST).assessment().step is Step.REFITTING
    )


def test_a_suspended_job_is_queued_and_says_which_queue() -> None:
    queued = _job("Running", reason="")
    queued["spec"] = {"suspend": True}
    queued["metadata"]["labels"][KUEUE_QUEUE_LABEL] = "gpu-batch"
    w = world(jobs=[queued], deployment=deployment(), refit_job_digest=DIGEST)
    assert w.assessment().step is Step.QUEUED
    status = w.status()
    ready = status.condition(ConditionType.READY)
    assert ready is not None and ready.reason == "Queued" and "queue gpu-batch admits it" in ready.message
    assert status.phase == "Pending"


class RefusingCluster(MemoryCluster):
    """The in-memory API, refusing Job creation as a ResourceQuota would (the real one is in
    tests/integration/test_recovery.py)."""

    def create_job(self, namespace: str, job: Obj) -> Obj:
        raise KubeError(403, "Forbidden", 'jobs "x" is forbidden: exceeded quota: jobs', "create job x")


def test_an_api_error_on_job_create_stalls_with_the_http_status_and_backs_off() -> None:
    cluster = RefusingCluster(body(), deployment())
    result = run(cluster)
    stalled = next(c for c in cluster.model["status"]["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "APIRequestDenied")
    assert "create job x failed: HTTP 403 Forbidden" in stalled["message"]
    assert result.backoff and result.retry_after is not None
    assert [e.reason for e in result.events] == ["APIRequestDenied"]
    assert run(cluster).events == []  # the same error again: no second Event


class TwoModels(MemoryCluster):
    def __init__(self, model: Obj, serving: Obj, owner: Obj | None) -> None:
        super().__init__(model, serving)
        self.owner = owner

    def get_model(self, namespace: str, name: str) -> Obj | None:
        if name == "resnet50":
            return copy.deepcopy(self.model)
        return copy.deepcopy(self.owner)


def _claimed_deployment() -> dict[str, Any]:
    claimed = deployment()
    claimed["metadata"]["annotations"][MODEL_ANNOTATION] = "other"
    return claimed


def test_a_deployment_another_live_model_serves_stalls_naming_it() -> None:
    owner = body(name="other")
    cluster = TwoModels(body(), _claimed_deployment(), owner)
    result = run(cluster)
    stalled = next(c for c in cluster.model["status"]["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "DeploymentClaimed")
    assert "serves TRTModel other" in stalled["message"] and not cluster.jobs
    assert [e.reason for e in result.events] == ["DeploymentClaimed"]


def test_a_stale_claim_is_taken_over() -> None:
    elsewhere = body({"serving": {"deploymentName": "another-server"}}, name="other")
    for owner in (None, elsewhere):
        cluster = TwoModels(body(), _claimed_deployment(), owner)
        run(cluster)
        assert cluster.serving is not None
        assert cluster.serving["metadata"]["annotations"][MODEL_ANNOTATION] == "resnet50"
        assert len(cluster.jobs) == 1


def test_the_first_refit_after_a_lost_result_is_attempt_two() -> None:
    cluster = MemoryCluster(body(), deployment())
    run(cluster)
    cluster.jobs.clear()  # deleted before the operator read its result
    lost = run(cluster)
    record = cluster.model["status"]["lastRefit"]
    assert record["failure"]["reason"] == "ResultLost" and "RefitResultLost" in [
        e.reason for e in lost.events
    ]
    assert lost.retry_after is not None and 9 <= lost.retry_after <= 10
    assert not cluster.jobs  # not rerun silently: it waits for its backoff first
    again = reconcile(cluster, CONFIG, "vision", "resnet50", NOW + timedelta(seconds=11))  # type: ignore[arg-type]
    (created,) = cluster.jobs.values()
    assert created["metadata"]["annotations"][ATTEMPT_ANNOTATION] == "2"
    assert [e.message for e in again.events if e.reason == "RefitStarted"] == [
        f"Created Job {JOB} (attempt 2) to refit checkpoint {cluster.model['spec']['checkpoint']['uri']}"
    ]


def test_consecutive_api_error_passes_back_off_and_a_clean_pass_resets_the_count() -> None:
    runtime = Runtime(cluster=MemoryCluster(body(), deployment()), config=CONFIG)  # type: ignore[arg-type]
    delays = [runtime.next_delay("ns", "m", 5.0, backoff=True) for _ in range(8)]
    assert delays == [5, 10, 20, 40, 80, 160, 300, 300]
    assert runtime.next_delay("ns", "m", 2.0, backoff=False) == 2.0  # not an API error: as asked
    assert runtime.next_delay("ns", "m", 5.0, backoff=True) == 5.0  # counting starts again
    assert runtime.next_delay("ns", "m", None, backoff=False) is None


def test_a_pass_that_gets_no_answer_from_the_api_server_retries_within_seconds() -> None:
    """A real connection refused (nothing listens on the port), not a mock: without this kopf waits its
    default 60 s before the next try, and a model stays behind an API server restart for a minute."""
    import asyncio
    import socket

    import kopf
    from kubernetes import client

    from trtrefit.controller.handlers import pass_or_retry
    from trtrefit.controller.kube import Cluster

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{port}"
    configuration.retries = 0
    runtime = Runtime(cluster=Cluster(client.ApiClient(configuration)), config=CONFIG)
    delays = []
    for _ in range(3):
        with pytest.raises(kopf.TemporaryError) as raised:
            asyncio.run(pass_or_retry(runtime, "vision", "resnet50"))
        assert "the API server did not answer" in str(raised.value)
        delays.append(raised.value.delay)
    assert delays == [1.0, 2.0, 4.0]
    assert runtime.metrics.models[("vision", "resnet50")].errors == {"Unreachable": 3}
