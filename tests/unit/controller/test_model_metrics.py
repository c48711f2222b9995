"""Per-TRTModel metrics: labelled by namespace/name, removed with the model, and the reconcile-error counter's
fixed reason classes."""

from __future__ import annotations

import asyncio

import pytest
from kubernetes.client.rest import ApiException
from prometheus_client import generate_latest
from pydantic import BaseModel, ValidationError
from urllib3.exceptions import MaxRetryError

from trtrefit.api.status import Phase
from trtrefit.controller.events import Finished
from trtrefit.controller.kube import ConflictError, KubeError
from trtrefit.controller.metrics import ERROR_REASONS, Metrics, error_reason


def scrape(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_per_model_series_carry_namespace_and_name_and_go_with_the_model() -> None:
    metrics = Metrics()
    metrics.record(
        [Finished("refit", "Passed", 30.0), Finished("rollout", "Complete", 5.0)], "vision/r50", 1e9
    )
    metrics.record([Finished("refit", "VerificationFailed", 12.0)], "vision/vit", 2e9)
    metrics.set_phase("vision/r50", Phase.REFITTING)
    metrics.set_phase("vision/r50", Phase.READY)
    metrics.set_phase("vision/vit", Phase.FAILED, "VerificationFailed")
    metrics.set_phase("vision/claimed", Phase.PENDING, "DeploymentClaimed")  # stalled outside Failed too
    text = scrape(metrics)
    assert [line for line in text.splitlines() if line.startswith("trtrefit_model_stalled{")] == [
        'trtrefit_model_stalled{name="claimed",namespace="vision",reason="DeploymentClaimed"} 1.0',
        'trtrefit_model_stalled{name="r50",namespace="vision",reason=""} 0.0',
        'trtrefit_model_stalled{name="vit",namespace="vision",reason="VerificationFailed"} 1.0',
    ]
    metrics.forget("vision/claimed")
    text = scrape(metrics)
    assert 'trtrefit_model_refits_total{name="r50",namespace="vision",outcome="Passed"} 1.0' in text
    assert (
        'trtrefit_model_refits_total{name="vit",namespace="vision",outcome="VerificationFailed"} 1.0' in text
    )
    assert 'trtrefit_model_rollouts_total{name="r50",namespace="vision",outcome="Complete"} 1.0' in text
    assert 'trtrefit_model_last_refit_duration_seconds{name="vit",namespace="vision"} 12.0' in text
    assert 'trtrefit_model_last_success_timestamp_seconds{name="r50",namespace="vision"} 1e+09' in text
    assert 'trtrefit_model_last_success_timestamp_seconds{name="vit"' not in text  # it never passed
    # One phase series per model: the old phase's series is gone, not 0.
    assert [line for line in text.splitlines() if line.startswith("trtrefit_model_phase{")] == [
        'trtrefit_model_phase{name="r50",namespace="vision",phase="Ready"} 1.0',
        'trtrefit_model_phase{name="vit",namespace="vision",phase="Failed"} 1.0',
    ]
    assert 'trtrefit_refits_total{outcome="Passed"} 1.0' in text  # the operator-wide counters too

    metrics.forget("vision/vit")
    text = scrape(metrics)
    assert 'name="vit"' not in text
    assert 'trtrefit_models{phase="Failed"} 0.0' in text
    assert 'trtrefit_refits_total{outcome="VerificationFailed"} 1.0' in text  # operator-wide: kept


def test_a_late_pass_of_a_deleted_model_creates_no_series() -> None:
    metrics = Metrics()
    metrics.record([Finished("refit", "Passed", 1.0)], "ns/gone", 1.0)
    metrics.forget("ns/gone")
    metrics.record([], "ns/gone", 2.0)
    metrics.set_phase("ns/gone", None)
    assert 'name="gone"' not in scrape(metrics)


class _Spec(BaseModel):
    rtol: float


def _validation_error() -> ValidationError:
    try:
        _Spec.model_validate({"rtol": "x"})
    except ValidationError as exc:
        return exc
    raise AssertionError("validated")


def _chained(cause: BaseException) -> Exception:
    try:
        raise RuntimeError("spec does not parse") from cause
    except RuntimeError as exc:
        return exc


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (_chained(_validation_error()), "InvalidSpec"),
        (ConflictError(409, "Conflict", "stale"), "Conflict"),
        (KubeError(403, "Forbidden", "no"), "Forbidden"),
        (ApiException(status=401), "Unauthorized"),
        (ApiException(status=503), "ApiError"),
        (MaxRetryError(None, "/apis", "refused"), "Unreachable"),  # type: ignore[arg-type]
        (ConnectionRefusedError(), "Unreachable"),
        (KeyError("status"), "Internal"),
    ],
)
def test_error_reasons_are_a_fixed_set(exc: BaseException, reason: str) -> None:
    assert error_reason(exc) == reason
    assert reason in ERROR_REASONS


def test_counting_errors_counts_and_re_raises() -> None:
    metrics = Metrics()

    async def failing_pass() -> None:
        async with metrics.counting_errors("ns/m"):
            raise ApiException(status=409, reason="Conflict", http_resp=None)

    for _ in range(2):
        with pytest.raises(ApiException):
            asyncio.run(failing_pass())
    assert 'trtrefit_reconcile_errors_total{name="m",namespace="ns",reason="Conflict"} 2.0' in scrape(metrics)
