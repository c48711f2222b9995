"""The operator trusts no report: a passed result is acted on only when its engine is what the worker
publishes — directly under spec.publish.uri, named by its 64-hex sha256."""

from __future__ import annotations

import pytest

from tests.unit.api.samples import model
from tests.unit.controller.objects import ENGINE_SHA, PUBLISHED, job, passed, pod
from trtrefit.api.result import PublishedEngine
from trtrefit.api.status import RefitOutcome
from trtrefit.controller.desired import desired_refit
from trtrefit.controller.records import RefitEvidence, refit_record, unpublished_engine
from trtrefit.controller.views import JobView, pod_report

SPEC = model().spec
DESIRED = desired_refit(SPEC)


def record_for(engine_uri: str, sha256: str = ENGINE_SHA, state: str = "Complete") -> tuple[str, str]:
    result = passed(engine_uri)
    assert result.engine is not None
    result = result.model_copy(update={"engine": PublishedEngine(uri=engine_uri, sha256=sha256)})
    finished = JobView.of(job("j", DESIRED.key, state=state))
    report = pod_report([pod("p", exit_code=0, message=result.to_json())], "job-uid")
    record = refit_record(DESIRED, RefitEvidence(job=finished, report=report), None)
    assert record is not None
    return record.outcome.value, record.message


def test_the_published_engine_is_trusted() -> None:
    assert unpublished_engine(passed(PUBLISHED), SPEC.publish.uri if SPEC.publish else None) == ""
    assert record_for(PUBLISHED)[0] == RefitOutcome.PASSED.value


@pytest.mark.parametrize(
    ("uri", "sha256", "why"),
    [
        ("https://evil.example/x.ep", ENGINE_SHA, "is not 's3://models/resnet50/refits/"),
        (f"s3://models/resnet50/refits/sub/{ENGINE_SHA}.ep", ENGINE_SHA, "under spec.publish.uri"),
        (f"s3://models/resnet50/refits/{'f' * 64}.ep", ENGINE_SHA, "named by its digest"),
    ],
)
def test_any_other_engine_is_refused_and_never_rolled_out(uri: str, sha256: str, why: str) -> None:
    outcome, message = record_for(uri, sha256)
    assert outcome == RefitOutcome.FAILED.value
    assert message.startswith("result refused: ") and why in message


def test_a_failed_job_cannot_report_a_pass() -> None:
    outcome, message = record_for(PUBLISHED, state="Failed")
    assert outcome == RefitOutcome.FAILED.value and "failed, yet its result says passed" in message


def test_a_result_whose_digest_is_not_a_digest_is_no_result() -> None:
    text = passed(PUBLISHED).to_json().replace(ENGINE_SHA, "not-a-digest")
    report = pod_report([pod("p", exit_code=0, message=text)], "job-uid")
    assert report is not None and report.result is None  # the typed model refuses it
    finished = JobView.of(job("j", DESIRED.key, state="Complete"))
    record = refit_record(DESIRED, RefitEvidence(job=finished, report=report), None)
    assert record is not None and record.outcome is RefitOutcome.FAILED and record.engine is None
