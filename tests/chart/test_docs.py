"""What the docs show is what the chart ships: the Argo CD snippet is the tested Lua, the RBAC table is the
rendered rules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.chart.argocd import HEALTH_LUA
from tests.chart.helmtool import REPO, by_kind, template

DOCS = REPO / "docs"


def test_argocd_snippet_is_the_shipped_health_check() -> None:
    text = (DOCS / "gitops.md").read_text()
    block = re.search(r"```yaml\n(apiVersion: v1\nkind: ConfigMap\n.*?)```", text, re.S)
    assert block, "docs/gitops.md has no argocd-cm example"
    config_map = yaml.safe_load(block.group(1))
    assert config_map["metadata"]["name"] == "argocd-cm"
    assert (
        config_map["data"]["resource.customizations.health.trtrefit.dev_TRTModel"] == HEALTH_LUA.read_text()
    )


@pytest.fixture(scope="module")
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("helm-home")


def test_rbac_table_lists_exactly_the_rendered_rules(helm_home: Path) -> None:
    rendered = set()
    manifests = template(helm_home) + template(helm_home, {"watchNamespaces": ["a"]})
    for role in by_kind(manifests, "ClusterRole") + by_kind(manifests, "Role"):
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    rendered.add((group, resource, tuple(sorted(rule["verbs"]))))
    documented = set()
    table = (DOCS / "helm.md").read_text().split("## RBAC", 1)[1].split("\n\n")[2]
    for line in table.splitlines()[2:]:
        group, resource, verbs = (cell.strip().strip("`") for cell in line.strip("|").split("|")[:3])
        documented.add(
            ("" if group == '""' else group, resource, tuple(sorted(v.strip() for v in verbs.split(","))))
        )
    assert documented == rendered
