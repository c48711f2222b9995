"""The chart's Artifact Hub annotations say what the chart really ships: its CRD, its images (as rendered
with default values), a TRTModel example the API models accept, the repository's license."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.helmtool import CHART, REPO, one, template
from trtrefit.api.trtmodel import TRTModel

# https://artifacthub.io/docs/topics/annotations/helm/
CATEGORIES = {
    "ai-machine-learning",
    "database",
    "integration-delivery",
    "monitoring-logging",
    "networking",
    "security",
    "storage",
    "streaming-messaging",
}
CAPABILITIES = {"Basic Install", "Seamless Upgrades", "Full Lifecycle", "Deep Insights", "Auto Pilot"}


@pytest.fixture(scope="module")
def chart() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "Chart.yaml").read_text())
    return loaded


def annotation(chart: dict[str, Any], key: str) -> Any:
    return yaml.safe_load(chart["annotations"][f"artifacthub.io/{key}"])


def test_crds_annotation_names_the_chart_crd(chart: dict[str, Any]) -> None:
    crd = yaml.safe_load((REPO / "crds" / "trtmodel.yaml").read_text())
    versions = [v["name"] for v in crd["spec"]["versions"] if v.get("served")]
    (entry,) = annotation(chart, "crds")
    assert (entry["kind"], entry["name"]) == (crd["spec"]["names"]["kind"], crd["metadata"]["name"])
    assert entry["version"] in versions and entry["displayName"] and entry["description"]


def test_crd_example_is_a_valid_trtmodel(chart: dict[str, Any]) -> None:
    (example,) = annotation(chart, "crdsExamples")
    model = TRTModel.model_validate(example)
    assert model.spec.checkpoint.uri.startswith("s3://")


def test_images_are_the_ones_the_chart_renders(chart: dict[str, Any], tmp_path: Path) -> None:
    images = {entry["name"]: entry["image"] for entry in annotation(chart, "images")}
    deployment = one(template(tmp_path), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert images == {"operator": container["image"], "worker": env["TRTREFIT_WORKER_IMAGE"]}
    assert all(image.endswith(f":{chart['appVersion']}") for image in images.values())


def test_license_links_and_category(chart: dict[str, Any]) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart["annotations"]["artifacthub.io/license"] == project["license"]
    links = annotation(chart, "links")
    assert links and all(link["name"] and link["url"].startswith("https://") for link in links)
    assert chart["annotations"]["artifacthub.io/category"] in CATEGORIES
    assert chart["annotations"]["artifacthub.io/operatorCapabilities"] in CAPABILITIES
    assert chart["annotations"]["artifacthub.io/operator"] == "true"
