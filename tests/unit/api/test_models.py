"""The TRTModel pydantic models on real objects: aliases, defaults, validation, immutability."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from tests.unit.api.samples import body, model
from trtrefit.api.jobspec import Device
from trtrefit.api.spec import DType
from trtrefit.api.status import (
    Condition,
    ConditionStatus,
    ConditionType,
    Digest,
    LastRefit,
    Phase,
    RefitOutcome,
    TRTModelStatus,
)
from trtrefit.api.trtmodel import TRTModel


def test_a_sample_object_parses_with_camel_case_fields() -> None:
    m = model(
        {"serving": {"engineEnvVar": "ENGINE"}, "refitJob": {"backoffLimit": 4, "nodeSelector": {"a": "b"}}}
    )
    assert m.metadata.name == "resnet50"
    assert m.spec.serving.deployment_name == "resnet50-server"
    assert m.spec.serving.engine_env_var == "ENGINE"
    assert m.spec.refit_job.backoff_limit == 4
    assert m.spec.refit_job.node_selector == {"a": "b"}
    assert m.spec.verify.generate is not None
    assert m.spec.verify.generate[0].shape == [8, 3, 224, 224]
    assert m.spec.verify.generate[0].dtype is DType.FLOAT32


def test_defaults_match_the_design() -> None:
    spec = model().spec
    assert (spec.verify.rtol, spec.verify.atol, spec.verify.min_cosine_similarity) == (0.01, 0.01, 0.999)
    assert spec.serving.engine_env_var == "TRT_ENGINE_URI"
    assert spec.refit_job.device is Device.AUTO
    assert spec.refit_job.backoff_limit == 2
    assert spec.refit_job.gpus is None
    assert spec.paused is False
    assert model().status == TRTModelStatus()


def test_models_are_frozen() -> None:
    m = model()
    with pytest.raises(ValidationError):
        m.spec.paused = True  # type: ignore[misc]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"checkpoint": {"uri": "ftp://x/y.safetensors"}}, "uri"),
        ({"checkpoint": {"sha256": "ABC"}}, "sha256"),
        ({"publish": {"uri": "https://models/refits/"}}, "uri"),
        ({"serving": {"deploymentName": "Not_A_Name"}}, "deploymentName"),
        ({"verify": {"minCosineSimilarity": 1.5}}, "minCosineSimilarity"),
        ({"verify": {"rtol": -1}}, "rtol"),
        ({"refitJob": {"gpus": -1}}, "gpus"),
        ({"refitJob": {"device": "tpu"}}, "device"),
        ({"verify": {"generate": [{"shape": [0, 3]}]}}, "shape"),
    ],
)
def test_pydantic_refuses_what_the_schema_refuses(change: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        TRTModel.model_validate(body(change))
    assert field in str(caught.value)


def test_resource_quantities_accept_ints_and_strings() -> None:
    m = model({"refitJob": {"resources": {"limits": {"memory": "32Gi", "cpu": 4}}}})
    assert m.spec.refit_job.resources.limits == {"memory": "32Gi", "cpu": "4"}


def test_status_round_trips_through_its_wire_form() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    status = TRTModelStatus(
        observed_generation=3,
        phase=Phase.REFITTING,
        conditions=[
            Condition(
                type=ConditionType.READY,
                status=ConditionStatus.FALSE,
                reason="Refitting",
                observed_generation=3,
                last_transition_time=now,
            )
        ],
        last_refit=LastRefit(
            key="k" * 32,
            job="resnet50-refit-kkkkkkkkkk",
            checkpoint=Digest(uri="s3://c/step-2.safetensors"),
            outcome=RefitOutcome.RUNNING,
            started_at=now,
        ),
    )
    wire = status.wire()
    assert wire["observedGeneration"] == 3
    assert wire["conditions"][0]["lastTransitionTime"] == "2026-01-02T03:04:05Z"
    assert "finishedAt" not in wire["lastRefit"]
    assert TRTModelStatus.model_validate(wire) == status
