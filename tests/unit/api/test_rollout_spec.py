"""spec.rollout (Restart | InPlace) and the InPlace parts of status, on real model instances and the
generated schema."""

from __future__ import annotations

from datetime import UTC, datetime

import jsonschema
import pytest
from pydantic import ValidationError

from tests.unit.api.samples import model
from tests.unit.api.test_crd import _closed
from trtrefit.api.crd import build_crd, openapi_schema
from trtrefit.api.spec import RolloutSpec, RolloutStrategy
from trtrefit.api.status import (
    Digest,
    LastRefit,
    PodCounts,
    RefitOutcome,
    RolloutOutcome,
    RolloutStatus,
    TRTModelStatus,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_rollout_defaults_keep_the_restart_strategy() -> None:
    rollout = model().spec.rollout
    assert rollout.strategy is RolloutStrategy.RESTART
    assert (rollout.max_concurrent, rollout.port, rollout.timeout_seconds) == ("25%", 8080, 120)


def test_in_place_needs_no_publish() -> None:
    spec = model({"publish": None, "rollout": {"strategy": "InPlace", "maxConcurrent": 2}}).spec
    assert spec.publish is None
    assert spec.rollout.strategy is RolloutStrategy.IN_PLACE
    assert spec.rollout.max_concurrent == "2"  # int-or-string: kept as text, read by batch_size


@pytest.mark.parametrize(
    ("max_concurrent", "replicas", "batch"),
    [("25%", 3, 1), ("25%", 8, 2), ("25%", 9, 3), ("100%", 5, 5), ("1%", 1, 1), (2, 10, 2), ("7", 3, 7)],
)
def test_batch_size_rounds_a_percentage_up_and_is_never_zero(
    max_concurrent: int | str, replicas: int, batch: int
) -> None:
    assert RolloutSpec.model_validate({"maxConcurrent": max_concurrent}).batch_size(replicas) == batch
    assert RolloutSpec.model_validate({"maxConcurrent": max_concurrent}).batch_size(0) >= 1


@pytest.mark.parametrize("bad", [0, "0", "0%", "101%", "25 %", "-1", "half", ""])
def test_max_concurrent_refuses_what_is_not_a_count_or_percentage(bad: int | str) -> None:
    with pytest.raises(ValidationError, match="maxConcurrent"):
        RolloutSpec.model_validate({"maxConcurrent": bad})


@pytest.mark.parametrize(
    "change", [{"port": 0}, {"port": 70000}, {"timeoutSeconds": 0}, {"strategy": "Blue"}]
)
def test_rollout_fields_are_bounded(change: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        RolloutSpec.model_validate(change)


def test_schema_carries_the_rollout_rules_and_defaults() -> None:
    spec = openapi_schema()["properties"]["spec"]
    rollout = spec["properties"]["rollout"]
    assert rollout["default"] == {}
    assert rollout["properties"]["strategy"]["enum"] == ["Restart", "InPlace"]
    assert rollout["properties"]["maxConcurrent"]["x-kubernetes-int-or-string"] is True
    (rule,) = rollout["properties"]["maxConcurrent"]["x-kubernetes-validations"]
    assert rule["rule"].startswith("type(self) == int ? self >= 1")
    assert "publish" not in spec["required"]
    (publish_rule,) = [r for r in spec["x-kubernetes-validations"] if r.get("fieldPath") == ".publish"]
    assert "InPlace" in publish_rule["rule"] and "Restart strategy" in publish_rule["message"]


def test_current_printer_column_reads_the_pod_summary() -> None:
    (version,) = build_crd()["spec"]["versions"]
    (column,) = [c for c in version["additionalPrinterColumns"] if c["name"] == "Current"]
    assert column["jsonPath"] == ".status.pods.summary"


def test_an_in_place_status_fits_the_schema_without_pruning() -> None:
    checkpoint = Digest(uri="s3://ckpt/step-2.safetensors", sha256="c" * 64)
    status = TRTModelStatus(
        observed_generation=3,
        pods=PodCounts(ready=3, current=3, summary="3/3"),
        last_refit=LastRefit(
            key="k" * 32,
            canary="server-0",
            checkpoint=checkpoint,
            outcome=RefitOutcome.PASSED,
            started_at=NOW,
            rollout=RolloutStatus(deployment="server", outcome=RolloutOutcome.COMPLETE, started_at=NOW),
        ),
    )
    wire = status.wire()
    assert "job" not in wire["lastRefit"] and wire["pods"] == {"ready": 3, "current": 3, "summary": "3/3"}
    jsonschema.validate(wire, _closed(openapi_schema()["properties"]["status"]))
