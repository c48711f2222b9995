"""examples/flux hangs together: paths and references resolve, the HelmRelease's values are accepted by the
chart, and the models Kustomization waits (kstatus) after the operator. The TRTModel itself is checked
against the real CRD in tests/integration/test_chart_install.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.helmtool import REPO, by_kind, one, template

FLUX = REPO / "examples" / "flux"
# Flux's GA APIs (Flux 2.3+); older beta versions are gone from current controllers.
FLUX_APIS = {
    "GitRepository": "source.toolkit.fluxcd.io/v1",
    "Kustomization": "kustomize.toolkit.fluxcd.io/v1",
    "HelmRelease": "helm.toolkit.fluxcd.io/v2",
}


def _docs() -> dict[str, list[dict[str, Any]]]:
    return {
        str(path.relative_to(FLUX)): [d for d in yaml.safe_load_all(path.read_text()) if d]
        for path in sorted(FLUX.rglob("*.yaml"))
    }


def _flux(kind: str) -> list[dict[str, Any]]:
    return [
        d
        for docs in _docs().values()
        for d in docs
        if d["kind"] == kind and "toolkit.fluxcd.io" in d["apiVersion"]
    ]


def test_flux_objects_use_the_ga_apis() -> None:
    flux_docs = [d for docs in _docs().values() for d in docs if "toolkit.fluxcd.io" in d["apiVersion"]]
    assert {d["kind"] for d in flux_docs} == set(FLUX_APIS)
    for doc in flux_docs:
        assert doc["apiVersion"] == FLUX_APIS[doc["kind"]], doc["metadata"]["name"]


def test_kustomize_resources_and_flux_paths_exist() -> None:
    for path in FLUX.rglob("kustomization.yaml"):
        for resource in yaml.safe_load(path.read_text())["resources"]:
            assert (path.parent / resource).is_file(), f"{path}: {resource}"
    for kustomization in _flux("Kustomization"):
        assert (REPO / kustomization["spec"]["path"]).is_dir(), kustomization["spec"]["path"]
        assert kustomization["spec"]["sourceRef"]["name"] == "trt-refit-operator"
    (release,) = _flux("HelmRelease")
    assert (REPO / release["spec"]["chart"]["spec"]["chart"] / "Chart.yaml").is_file()


def test_models_wait_for_kstatus_after_the_operator() -> None:
    kustomizations = {k["metadata"]["name"]: k["spec"] for k in _flux("Kustomization")}
    models, operator = kustomizations["trt-models"], kustomizations["trt-refit-operator"]
    assert models["wait"] is True and operator["wait"] is True
    assert models["dependsOn"] == [{"name": "trt-refit-operator"}]
    assert models["path"].endswith("/models")
    # A refit (image pull, GPU scheduling, refit, verify) and a rollout take minutes, not the 5m default.
    assert models["timeout"].endswith("m") and int(models["timeout"][:-1]) >= 15
    models_dir = REPO / models["path"]
    kinds = {d["kind"] for p in models_dir.glob("*.yaml") for d in yaml.safe_load_all(p.read_text()) if d}
    assert "TRTModel" in kinds


def test_git_source_keeps_what_flux_applies() -> None:
    (source,) = _flux("GitRepository")
    ignore = source["spec"]["ignore"].split()
    assert ignore[0] == "/*" and "!/charts/" in ignore and "!/examples/flux/" in ignore


@pytest.fixture(scope="module")
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("helm-home")


def test_helmrelease_values_are_accepted_by_the_chart(helm_home: Path) -> None:
    (release,) = _flux("HelmRelease")
    values = release["spec"]["values"]
    manifests = template(
        helm_home, values, release="trt-refit-operator", namespace=release["metadata"]["namespace"]
    )
    namespaces = yaml.safe_load_all((FLUX / "infrastructure" / "namespace.yaml").read_text())
    created = {d["metadata"]["name"] for d in namespaces}
    # The chart puts a Role into each watched namespace: the example must create them first.
    assert {r["metadata"]["namespace"] for r in by_kind(manifests, "Role")} <= created
    assert one(manifests, "Deployment")["metadata"]["namespace"] in created
