"""Reading Jobs, refit pods and the serving Deployment as the API returns them."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.unit.api.samples import model
from tests.unit.controller.objects import ENGINE_SHA, deployment, job, passed, pod
from trtrefit.api.result import Outcome
from trtrefit.controller.views import (
    DeploymentView,
    JobState,
    JobView,
    RolloutState,
    pod_progress,
    pod_report,
)

SERVING = model().spec.serving


def test_job_states_and_times() -> None:
    running = JobView.of(job("j", "k"))
    assert (running.state, running.key, running.finished_at) == (JobState.RUNNING, "k", None)
    assert running.started_at == datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
    done = JobView.of(job("j", "k", state="Complete"))
    assert done.state is JobState.SUCCEEDED and done.finished_at == datetime(2026, 1, 2, 3, 0, 42, tzinfo=UTC)
    failed = JobView.of(
        job("j", "k", state="Failed", reason="BackoffLimitExceeded", message="Job has reached the\nlimit")
    )
    assert (failed.state, failed.reason, failed.message) == (
        JobState.FAILED,
        "BackoffLimitExceeded",
        "Job has reached the limit",
    )


def test_pod_report_reads_the_result_of_the_last_finished_pod_of_this_job() -> None:
    pods = [
        pod("p-old", exit_code=1, message="first try", finished="2026-01-02T03:00:10Z"),
        pod("p-new", exit_code=0, message=passed().to_json(), finished="2026-01-02T03:00:40Z"),
        pod("p-other-job", job_uid="other", exit_code=0, message="x", finished="2026-01-02T03:01:00Z"),
        pod("p-running", exit_code=None),
    ]
    report = pod_report(pods, "job-uid")
    assert report is not None and report.pod == "p-new" and report.exit_code == 0
    assert report.result is not None and report.result.outcome is Outcome.PASSED
    assert report.result.engine is not None and report.result.engine.sha256 == ENGINE_SHA


def test_a_message_that_is_not_a_result_is_kept_as_text() -> None:
    report = pod_report([pod("p", exit_code=1, message="Traceback ...\nKeyError: 'x'\n")], "job-uid")
    assert report is not None and report.result is None
    assert report.summary == "Traceback ... KeyError: 'x'"
    empty = pod_report([pod("p", exit_code=137)], "job-uid")
    assert empty is not None and empty.summary == "pod p exited with code 137 and no message"


def test_no_report_without_a_finished_pod() -> None:
    assert pod_report([pod("p", exit_code=None)], "job-uid") is None


def test_pod_progress_names_waiting_and_unschedulable_pods() -> None:
    pulling = pod("p", exit_code=None, waiting=("ImagePullBackOff", "Back-off pulling image w:1"))
    assert pod_progress([pulling], "job-uid") is not None
    assert pod_progress([pulling], "job-uid").message == "ImagePullBackOff: Back-off pulling image w:1"  # type: ignore[union-attr]
    pending = pod(
        "p", exit_code=None, unschedulable="0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
    )
    progress = pod_progress([pending], "job-uid")
    assert progress is not None and "Insufficient nvidia.com/gpu" in progress.message
    assert pod_progress([pod("p", exit_code=None)], "job-uid") is None


def test_deployment_view_reads_the_engine_and_our_annotations() -> None:
    view = DeploymentView.of(deployment(key="k1", sha="a" * 64, reverted="k0"), SERVING)
    assert (view.container, view.engine_uri, view.refit_key, view.engine_sha256, view.reverted_key) == (
        "server",
        "s3://models/resnet50/engine.ep",
        "k1",
        "a" * 64,
        "k0",
    )
    assert view.resource_version == "77"


def test_rollout_states_like_kubectl_rollout_status() -> None:
    def state(**kwargs: object) -> RolloutState:
        return DeploymentView.of(deployment(**kwargs), SERVING).rollout()  # type: ignore[arg-type]

    assert state() is RolloutState.COMPLETE
    assert state(generation=2, observed=1) is RolloutState.PROGRESSING
    assert state(updated=1) is RolloutState.PROGRESSING
    assert state(available=1) is RolloutState.PROGRESSING
    assert state(deadline_exceeded=True, updated=1) is RolloutState.FAILED
    assert state(replicas=0, updated=0, available=0) is RolloutState.COMPLETE


def test_container_must_be_named_when_the_pod_has_several() -> None:
    unnamed = model({"serving": {"containerName": None}}).spec.serving
    single = DeploymentView.of(deployment(), unnamed)
    assert single.container == "server"
    several = DeploymentView.of(deployment(containers=["server", "sidecar"]), unnamed)
    assert several.container is None and "containerName" in several.container_problem
    wrong = DeploymentView.of(deployment(containers=["main"]), SERVING)
    assert wrong.container is None and "no container named server" in wrong.container_problem
