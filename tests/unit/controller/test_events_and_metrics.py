"""Events and metric samples follow transitions only: a pass that changes nothing says nothing."""

from __future__ import annotations

from prometheus_client import generate_latest

from tests.unit.api.samples import model
from tests.unit.controller.objects import deployment, failed_verification, job, passed, pod
from tests.unit.controller.scenarios import key_of, world
from trtrefit.api.status import Digest, Phase, ServingStatus, TRTModelStatus
from trtrefit.controller.events import Finished, action_events, status_events
from trtrefit.controller.metrics import Metrics
from trtrefit.controller.plan import CreateJob, DeleteJob, Revert, RollOut
from trtrefit.controller.views import JobState, JobView

KEY = key_of()
JOB = f"resnet50-refit-{KEY[:10]}"
SPEC = model().spec


def test_each_action_has_an_event_naming_its_object() -> None:
    old = JobView(name="resnet50-refit-0000000000", uid="u", key="0" * 32, state=JobState.RUNNING)
    engine = Digest(uri="s3://m/refits/abc.ep", sha256="e" * 64)
    events = action_events(
        [
            DeleteJob(old, superseded_by=Digest(uri="s3://ckpt/step-1300.safetensors")),
            CreateJob(),
            RollOut(engine=engine, checkpoint=Digest(uri="c"), key=KEY),
            Revert(to=ServingStatus(engine=Digest(uri="s3://m/engine.ep")), failed_key=KEY),
        ],
        "resnet50",
        SPEC,
        KEY,
    )
    assert [(e.type, e.reason) for e in events] == [
        ("Normal", "RefitSuperseded"),
        ("Normal", "RefitStarted"),
        ("Normal", "RolloutStarted"),
        ("Warning", "RolloutReverted"),
    ]
    assert "resnet50-refit-0000000000" in events[0].message and "step-1300" in events[0].message
    assert JOB in events[1].message
    assert "TRT_ENGINE_URI=s3://m/refits/abc.ep (sha256 eeeeeeeeeeee)" in events[2].message
    assert "s3://m/engine.ep" in events[3].message


def test_a_passed_refit_is_announced_once_with_its_numbers() -> None:
    refitting = world(jobs=[job(JOB, KEY)], deployment=deployment()).status()
    done_world = world(
        jobs=[job(JOB, KEY, state="Complete")],
        pods=[pod("p", message=passed().to_json())],
        deployment=deployment(),
        status=refitting,
    )
    done = done_world.status()
    events, finished = status_events(refitting, done, SPEC)
    assert [e.reason for e in events] == ["RefitPassed"]
    assert "max abs error 0.001 (atol 0.01)" in events[0].message and "42.0 s" in events[0].message
    assert finished == [Finished("refit", "Passed", 42.0)]
    assert status_events(done, done, SPEC) == ([], [])


def test_a_failed_verification_is_a_warning() -> None:
    refitting = world(jobs=[job(JOB, KEY)], deployment=deployment()).status()
    failed = world(
        jobs=[job(JOB, KEY, state="Failed")],
        pods=[pod("p", exit_code=2, message=failed_verification().to_json())],
        deployment=deployment(),
        status=refitting,
    ).status()
    events, finished = status_events(refitting, failed, SPEC)
    assert [(e.type, e.reason) for e in events] == [("Warning", "VerificationFailed")]
    assert "max abs error 0.5" in events[0].message
    assert finished[0].outcome == "VerificationFailed"


def test_stalls_without_a_refit_event_get_their_own() -> None:
    before = TRTModelStatus()
    no_image = world(deployment=deployment(), has_worker_image=False).status()
    events, _ = status_events(before, no_image, SPEC)
    assert [(e.type, e.reason) for e in events] == [("Warning", "NoWorkerImage")]
    assert status_events(no_image, no_image, SPEC) == ([], [])


def test_pausing_and_resuming() -> None:
    pending = world(deployment=deployment()).status()
    paused = world({"paused": True}, deployment=deployment(), status=pending).status()
    events, _ = status_events(pending, paused, model({"paused": True}).spec)
    assert [e.reason for e in events] == ["Paused"]
    events, _ = status_events(paused, pending, SPEC)
    assert [e.reason for e in events] == ["Resumed"]


def test_metrics_exposition() -> None:
    metrics = Metrics()
    metrics.record([Finished("refit", "Passed", 42.0), Finished("rollout", "Complete", 12.0)])
    metrics.set_phase("vision/resnet50", Phase.READY)
    metrics.set_phase("vision/vit", Phase.REFITTING)
    metrics.set_phase("vision/vit", Phase.READY)
    text = generate_latest(metrics.registry).decode()
    assert 'trtrefit_refits_total{outcome="Passed"} 1.0' in text
    assert "trtrefit_refit_duration_seconds_sum 42.0" in text
    assert 'trtrefit_rollout_duration_seconds_count{outcome="Complete"} 1.0' in text
    assert 'trtrefit_models{phase="Ready"} 2.0' in text
    assert 'trtrefit_models{phase="Refitting"} 0.0' in text
    metrics.forget("vision/vit")
    assert 'trtrefit_models{phase="Ready"} 1.0' in generate_latest(metrics.registry).decode()
