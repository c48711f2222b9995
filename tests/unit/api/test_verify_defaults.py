"""spec.verify is optional: its defaults, and how they reach the refit request the worker and the serving
pods take."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tests.unit.api.samples import model
from trtrefit.api.request import RefitRequest, refit_request
from trtrefit.api.spec import VerifySpec

ARTIFACTS = {
    "engine": {"uri": "s3://m/engine.ep"},
    "checkpoint": {"uri": "s3://m/c.pt2"},
    "publish": {"uri": "s3://m/refits/"},
}


def test_a_spec_without_verify_gets_the_tutorial_tolerances_and_no_inputs() -> None:
    spec = model({"verify": None}).spec
    assert spec.verify == VerifySpec()
    assert (spec.verify.rtol, spec.verify.atol, spec.verify.min_cosine_similarity) == (0.01, 0.01, 0.999)
    assert spec.verify.inputs is None and spec.verify.generate is None and spec.verify.seed is None


def test_the_request_of_a_spec_without_verify_round_trips_without_inputs() -> None:
    request = refit_request(model({"verify": None}).spec, key="ab" * 16)
    again = RefitRequest.model_validate_json(request.wire())
    assert again == request
    assert again.verify.inputs is None and again.verify.generate is None


def test_a_request_without_verify_is_accepted() -> None:
    request = RefitRequest.model_validate(ARTIFACTS)
    assert request.verify == VerifySpec()


def test_a_seed_applies_to_signature_inputs_too() -> None:
    request = RefitRequest.model_validate({**ARTIFACTS, "verify": {"seed": 3}})
    assert request.verify.seed == 3


@pytest.mark.parametrize(
    ("verify", "message"),
    [
        (
            {"inputs": {"uri": "s3://m/i.safetensors"}, "generate": [{"shape": [1]}]},
            "set at most one of verify.inputs and verify.generate",
        ),
        ({"inputs": {"uri": "s3://m/i.safetensors"}, "seed": 1}, "verify.seed only applies to generated"),
    ],
)
def test_a_request_refuses_what_the_crd_refuses(verify: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RefitRequest.model_validate({**ARTIFACTS, "verify": verify})
