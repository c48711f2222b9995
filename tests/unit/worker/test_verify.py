"""Output comparison: tolerances, cosine similarity, non-finite values, constant references."""

from __future__ import annotations

import json

import pytest
import torch

from trtrefit.api.result import Outcome, RefitResult
from trtrefit.worker.verify import WORST, Tolerances, verify

TOL = Tolerances(rtol=1e-3, atol=1e-3, min_cosine_similarity=0.999)


def ref() -> torch.Tensor:
    return torch.linspace(-1.0, 1.0, 40).reshape(4, 10)


def test_equal_outputs_pass() -> None:
    report = verify([ref()], [ref()], TOL)
    assert report.verification.passed
    assert report.verification.max_abs_error == 0.0
    assert report.verification.min_cosine_similarity == pytest.approx(1.0)
    assert report.message.startswith("verified 1 output(s)")


def test_small_differences_within_tolerance_pass() -> None:
    report = verify([ref() + 5e-4], [ref()], TOL)
    assert report.verification.passed
    assert abs(report.verification.max_abs_error - 5e-4) < 1e-6


def test_absolute_error_beyond_tolerance_fails() -> None:
    actual = ref().clone()
    actual[0, 0] += 0.1
    report = verify([actual], [ref()], TOL)
    assert not report.verification.passed
    assert "output_0: max abs error 0.1 exceeds atol" in report.message


def test_low_cosine_similarity_fails_even_within_loose_tolerances() -> None:
    loose = Tolerances(rtol=10.0, atol=10.0, min_cosine_similarity=0.999)
    report = verify([-ref()], [ref()], loose)
    assert not report.verification.passed
    assert "cosine similarity -1.000000 < 0.999" in report.message


def test_non_finite_reference_fails_with_finite_numbers_in_the_result() -> None:
    reference = ref().clone()
    reference[1, 1] = float("nan")
    report = verify([ref()], [reference], TOL)
    assert not report.verification.passed
    assert "reference output holds NaN/inf" in report.message
    assert report.verification.max_abs_error == WORST
    result = RefitResult(outcome=Outcome.VERIFICATION_FAILED, verification=report.verification)
    assert RefitResult.from_json(result.to_json()) == result
    json.loads(result.to_json())


def test_non_finite_engine_output_fails() -> None:
    actual = ref().clone()
    actual[0, 0] = float("inf")
    assert "engine's output holds NaN/inf" in verify([actual], [ref()], TOL).message


def test_a_constant_reference_proves_nothing() -> None:
    zeros = torch.zeros(4, 10)
    report = verify([zeros], [zeros], TOL)
    assert not report.verification.passed
    assert "the reference output is constant (0 everywhere)" in report.message


def test_shape_and_count_mismatches() -> None:
    assert (
        "shape [40] differs from the reference [4, 10]" in verify([ref().reshape(-1)], [ref()], TOL).message
    )
    assert "the engine returned 2 tensors, the reference 1" in verify([ref(), ref()], [ref()], TOL).message


def test_worst_output_wins() -> None:
    report = verify([ref(), ref() + 2e-4], [ref(), ref()], TOL)
    assert report.verification.passed
    assert len(report.verification.outputs) == 2
    assert abs(report.verification.max_abs_error - 2e-4) < 1e-6
