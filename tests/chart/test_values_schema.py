"""Bad values are refused by helm itself (values.schema.json, then the chart's own checks) with a message that
names the value and says what is wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.helmtool import CHART, template_error

REFUSED: list[tuple[str, dict[str, Any], list[str]]] = [
    (
        "typo at the top level",
        {"watchNamespace": ["a"]},
        ["additional properties 'watchNamespace' not allowed"],
    ),
    (
        "typo inside a block",
        {"image": {"repository": "r", "pullpolicy": "Always"}},
        ["/image", "additional properties 'pullpolicy' not allowed"],
    ),
    (
        "pull policy",
        {"image": {"repository": "r", "pullPolicy": "Sometimes"}},
        ["/image/pullPolicy", "'Always', 'IfNotPresent', 'Never'"],
    ),
    ("digest without algorithm", {"image": {"repository": "r", "digest": "abc123"}}, ["/image/digest"]),
    ("tag with a colon", {"refit": {"image": {"repository": "r", "tag": "1.0:x"}}}, ["/refit/image/tag"]),
    ("namespace not a DNS label", {"watchNamespaces": ["Vision_Team"]}, ["/watchNamespaces/0"]),
    (
        "namespace listed twice",
        {"watchNamespaces": ["a", "a"]},
        ["/watchNamespaces", "items at 0 and 1 are equal"],
    ),
    ("replicas negative", {"replicaCount": -1}, ["/replicaCount", "minimum"]),
    ("replicas as text", {"replicaCount": "1"}, ["/replicaCount", "want integer"]),
    ("two replicas", {"replicaCount": 2}, ["replicaCount is 2, but must be 0 or 1", "no kopf peering"]),
    ("log level", {"operator": {"logLevel": "trace"}}, ["/operator/logLevel", "'info', 'debug'"]),
    ("port out of range", {"metrics": {"port": 70000}}, ["/metrics/port", "maximum"]),
    ("ports collide", {"metrics": {"port": 8081}}, ["metrics.port and health.port are both 8081"]),
    (
        "scrape interval without unit",
        {"metrics": {"serviceMonitor": {"interval": "30"}}},
        ["/metrics/serviceMonitor/interval"],
    ),
    (
        "service monitor without metrics",
        {"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}},
        ["metrics.serviceMonitor.enabled needs metrics.enabled"],
    ),
    ("service type", {"metrics": {"service": {"type": "Ingress"}}}, ["/metrics/service/type"]),
    (
        "annotation value not a string",
        {"serviceAccount": {"annotations": {"a": 1}}},
        ["/serviceAccount/annotations/a", "want string"],
    ),
    (
        "existing service account without a name",
        {"serviceAccount": {"create": False}},
        ["serviceAccount.name is required when serviceAccount.create is false"],
    ),
    ("crds.install as text", {"crds": {"install": "yes"}}, ["/crds/install", "want boolean"]),
]


@pytest.fixture(scope="module")
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("helm-home")


@pytest.mark.parametrize(
    ("values", "expected"), [(v, e) for _, v, e in REFUSED], ids=[n for n, _, _ in REFUSED]
)
def test_bad_value_is_refused_with_a_clear_message(
    helm_home: Path, values: dict[str, Any], expected: list[str]
) -> None:
    error = template_error(helm_home, values)
    for fragment in expected:
        assert fragment in error, error


def test_schema_describes_every_default_value() -> None:
    """Every key in values.yaml is in the schema (so `additionalProperties: false` never rejects a default)
    and every schema property says what it is for, down to the leaves users set."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(values: Any, node: dict[str, Any], path: str) -> None:
        if not isinstance(values, dict) or "properties" not in node:
            return
        for key, value in values.items():
            assert key in node["properties"], f"{path}{key} is in values.yaml but not in values.schema.json"
            walk(value, node["properties"][key], f"{path}{key}.")

    walk(defaults, schema, "")
    undescribed = [key for key, prop in schema["properties"].items() if "description" not in prop]
    assert undescribed == []
