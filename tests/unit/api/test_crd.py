"""The generated CRD: committed and current, a valid structural v1 CRD, described field by field, and able
to hold everything the operator writes into status."""

from __future__ import annotations

import argparse
import copy
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from trtrefit.api.commands import add_crd_parser
from trtrefit.api.crd import CRD_PATH, build_crd, openapi_schema, render_crd
from trtrefit.api.status import (
    Condition,
    ConditionStatus,
    Digest,
    HistoryEntry,
    LastRefit,
    Phase,
    RefitOutcome,
    RolloutOutcome,
    RolloutStatus,
    ServingStatus,
    TRTModelStatus,
    VerificationSummary,
)

REPO = Path(__file__).resolve().parents[3]
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def test_committed_crd_is_current() -> None:
    committed = (REPO / CRD_PATH).read_text()
    assert committed == render_crd(), f"{CRD_PATH} is stale: run `trtrefit crd --output {CRD_PATH}`"


def test_crd_is_valid_for_the_kubernetes_api() -> None:
    kubernetes_validate.validate(build_crd(), "1.35.0", strict=True)


def test_names_columns_and_subresources() -> None:
    crd = build_crd()
    names = crd["spec"]["names"]
    assert crd["metadata"]["name"] == "trtmodels.trtrefit.dev"
    assert (names["kind"], names["plural"], names["shortNames"]) == ("TRTModel", "trtmodels", ["trtm"])
    assert names["categories"] == ["trtrefit"]
    assert crd["spec"]["scope"] == "Namespaced"
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if c.get("priority", 0) == 0]
    assert columns == ["Phase", "Checkpoint", "Ready", "Current", "Age"]


def test_every_field_has_a_description() -> None:
    missing = [path for path, node in walk(openapi_schema()) if path and not node.get("description")]
    missing = [
        p for p in missing if not p.endswith(("[]", "{}"))
    ]  # list items and map values: the parent says
    assert missing == [".metadata"]  # the API server forbids describing metadata


def test_schema_is_structural() -> None:
    for path, node in walk(openapi_schema()):
        assert not {"$ref", "$defs", "allOf", "oneOf", "anyOf", "title"} & node.keys(), path
        special = node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
        assert special or "type" in node, f"{path} has no type"
        assert node.get("default") is not None or "default" not in node, f"{path} defaults to null"


def test_cel_rules_sit_where_they_check() -> None:
    spec = openapi_schema()["properties"]["spec"]

    def rules(node: dict[str, Any]) -> list[str]:
        return [rule["rule"] for rule in node.get("x-kubernetes-validations", [])]

    assert any("has(self.source)" in r for r in rules(spec))
    assert "!(has(self.inputs) && has(self.generate))" in rules(spec["properties"]["verify"])
    assert any("gpus" in r for r in rules(spec["properties"]["refitJob"]))
    assert any("metadata.name" in r for r in rules(openapi_schema()))


def test_scalar_defaults_are_in_the_schema_but_not_in_status() -> None:
    schema = openapi_schema()
    verify = schema["properties"]["spec"]["properties"]["verify"]["properties"]
    assert verify["rtol"]["default"] == 0.01
    assert schema["properties"]["spec"]["properties"]["refitJob"]["default"] == {}
    assert all("default" not in node for _, node in walk(schema["properties"]["status"]))


def _closed(node: dict[str, Any]) -> dict[str, Any]:
    """A copy that refuses unknown fields, as the API server would prune them."""
    node = copy.deepcopy(node)
    for _, child in walk(node):
        if "properties" in child:
            child["additionalProperties"] = False
    return node


def test_a_full_status_fits_the_schema_without_pruning() -> None:
    digest = Digest(uri="s3://m/refits/abc.ep", sha256="a" * 64)
    status = TRTModelStatus(
        observed_generation=2,
        phase=Phase.READY,
        conditions=[
            Condition(
                type="Ready",
                status=ConditionStatus.TRUE,
                reason="Ready",
                message="ok",
                observed_generation=2,
                last_transition_time=NOW,
            )
        ],
        serving=ServingStatus(engine=digest, checkpoint=digest, refit_key="k", since=NOW),
        last_refit=LastRefit(
            key="k",
            job="j",
            checkpoint=digest,
            outcome=RefitOutcome.PASSED,
            started_at=NOW,
            finished_at=NOW,
            seconds=1.5,
            engine=digest,
            verification=VerificationSummary(
                passed=True, max_abs_error=0.001, max_rel_error=0.002, min_cosine_similarity=0.9999
            ),
            backend="exported",
            path="exported",
            message="refit",
            rollout=RolloutStatus(
                deployment="d", outcome=RolloutOutcome.COMPLETE, started_at=NOW, finished_at=NOW, seconds=3.0
            ),
        ),
        history=[HistoryEntry(engine=digest, checkpoint=digest, since=NOW, until=NOW)],
    )
    schema = _closed(openapi_schema()["properties"]["status"])
    jsonschema.validate(status.wire(), schema, format_checker=jsonschema.FormatChecker())


def _run_crd(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_crd_parser(parser.add_subparsers())
    args = parser.parse_args(["crd", *argv])
    code: int = args.func(args)
    return code


def test_crd_command_writes_and_checks(tmp_path: Path) -> None:
    target = tmp_path / "crds" / "trtmodel.yaml"
    assert _run_crd("--output", str(target)) == 0
    assert yaml.safe_load(target.read_text())["kind"] == "CustomResourceDefinition"
    assert _run_crd("--check", str(target)) == 0
    target.write_text(target.read_text().replace("trtm", "trtx"))
    assert _run_crd("--check", str(target)) == 1


def test_crd_check_of_a_missing_file_fails(tmp_path: Path) -> None:
    assert _run_crd("--check", str(tmp_path / "nothing-here.yaml")) == 1
