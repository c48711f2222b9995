"""The chart renders valid, least-privilege, restricted-Pod-Security manifests for default and other values.

helm lint and helm template run the real (pinned) helm; kubernetes-validate checks every rendered object
against the Kubernetes OpenAPI schema of the version we run, strictly (unknown fields are errors).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.chart.helmtool import (
    CHART,
    KUBE_VERSION,
    REPO,
    Manifest,
    by_kind,
    one,
    run_helm,
    set_args,
    template,
)

# Values a platform team would plausibly set, one set per case; each must lint, render and validate.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "namespaced": {"watchNamespaces": ["vision", "nlp"]},
    "digests-and-monitoring": {
        "image": {
            "repository": "registry.example.com/trt/operator",
            "tag": "0.1.0",
            "digest": "sha256:" + "a" * 64,
            "pullPolicy": "Always",
        },
        "refit": {
            "image": {"repository": "registry.example.com/trt/worker", "digest": "sha256:" + "b" * 64},
            "serviceAccount": {
                "name": "refitter",
                "annotations": {"iam.gke.io/gcp-service-account": "r@p.iam"},
                "namespaces": ["models"],
            },
        },
        "metrics": {
            "port": 9090,
            "service": {"port": 9090},
            "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
            "prometheusRule": {"enabled": True, "labels": {"release": "prom"}, "alertLabels": {"team": "ml"}},
            "dashboard": {
                "enabled": True,
                "annotations": {"grafana_folder": "ML"},
                "namespace": "monitoring",
            },
        },
        "imagePullSecrets": [{"name": "regcred"}],
        "operator": {"logLevel": "debug", "extraArgs": ["--some-flag"], "env": [{"name": "A", "value": "1"}]},
    },
    "externally-managed": {
        "crds": {"install": False},
        "serviceAccount": {"create": False, "name": "platform-operator"},
        "rbac": {"create": False},
        "refit": {"serviceAccount": {"create": False}},
        "metrics": {"enabled": False},
        "replicaCount": 0,
        "fullnameOverride": "trtrefit",
    },
}


@pytest.fixture(scope="module")
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("helm-home")


@pytest.fixture(scope="module")
def rendered(helm_home: Path) -> dict[str, list[Manifest]]:
    return {name: template(helm_home, values) for name, values in VALUE_SETS.items()}


@pytest.mark.parametrize("case", VALUE_SETS)
def test_helm_lint_is_clean(helm_home: Path, case: str) -> None:
    result = run_helm(
        ["lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, *set_args(VALUE_SETS[case])],
        helm_home,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("case", VALUE_SETS)
def test_every_rendered_object_is_valid_kubernetes(rendered: dict[str, list[Manifest]], case: str) -> None:
    schema_version = ".".join(KUBE_VERSION.split(".")[:2]) + ".0"
    for manifest in rendered[case]:
        if manifest["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # prometheus-operator's CRD is not in the Kubernetes schema; its shape is tested below
        kubernetes_validate.validate(manifest, schema_version, strict=True)


def _containers(manifests: list[Manifest]) -> list[dict[str, Any]]:
    return one(manifests, "Deployment")["spec"]["template"]["spec"]["containers"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("case", ["default", "namespaced", "digests-and-monitoring"])
def test_operator_pod_meets_restricted_pod_security(rendered: dict[str, list[Manifest]], case: str) -> None:
    pod = one(rendered[case], "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # The read-only root needs a writable /tmp, and only that.
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"][0]["name"] == "tmp" and "emptyDir" in pod["volumes"][0]
    assert not any(key in pod for key in ("hostNetwork", "hostPID", "hostIPC"))
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_one_standalone_replica_replaced_with_recreate(rendered: dict[str, list[Manifest]]) -> None:
    deployment = one(rendered["default"], "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = _containers(rendered["default"])
    assert container["args"][0] == "operator"


@pytest.mark.parametrize("case", ["default", "namespaced", "externally-managed"])
def test_operator_arguments_are_accepted_by_the_real_cli(
    rendered: dict[str, list[Manifest]], case: str
) -> None:
    """The image's entrypoint is `trtrefit`; the chart's args must parse with its real argument parser."""
    from trtrefit.cli import build_parser

    (container,) = _containers(rendered[case])
    args = build_parser().parse_args(container["args"])
    assert args.command == "operator"
    assert args.namespaces == (VALUE_SETS[case].get("watchNamespaces") or None)
    assert args.all_namespaces is not bool(args.namespaces)
    metrics = VALUE_SETS[case].get("metrics", {})
    assert args.metrics_port == (0 if metrics.get("enabled") is False else metrics.get("port", 8080))
    assert args.liveness == "http://0.0.0.0:8081/healthz"


def test_default_watches_all_namespaces_with_cluster_roles(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["default"]
    assert "--all-namespaces" in _containers(manifests)[0]["args"]
    assert not by_kind(manifests, "Role") and not by_kind(manifests, "RoleBinding")
    roles = {r["metadata"]["name"] for r in by_kind(manifests, "ClusterRole")}
    bound = {b["roleRef"]["name"] for b in by_kind(manifests, "ClusterRoleBinding")}
    assert roles == bound == {"trt-trt-refit-operator", "trt-trt-refit-operator-cluster"}


def test_namespaced_mode_grants_namespaced_rights_only_where_watched(
    rendered: dict[str, list[Manifest]],
) -> None:
    manifests = rendered["namespaced"]
    args = _containers(manifests)[0]["args"]
    assert "--all-namespaces" not in args
    assert [a for a in args if a.startswith("--namespace=")] == ["--namespace=vision", "--namespace=nlp"]
    assert {r["metadata"]["namespace"] for r in by_kind(manifests, "Role")} == {"vision", "nlp"}
    assert {b["metadata"]["namespace"] for b in by_kind(manifests, "RoleBinding")} == {"vision", "nlp"}
    (cluster_role,) = by_kind(manifests, "ClusterRole")
    # What stays cluster-wide is read-only and about cluster-scoped objects, never TRTModels, Jobs or pods.
    for rule in cluster_role["rules"]:
        assert set(rule["verbs"]) <= {"get", "list", "watch"}
        assert "trtrefit.dev" not in rule["apiGroups"]
    refit_accounts = by_kind(manifests, "ServiceAccount")
    assert {
        sa["metadata"]["namespace"] for sa in refit_accounts if sa["metadata"]["name"].endswith("-refit")
    } == {"vision", "nlp"}


def test_rules_grant_no_wildcards_and_secrets_only_by_name(rendered: dict[str, list[Manifest]]) -> None:
    # InPlace: the token Secret and the desired-refit ConfigMap are created and read by name, never listed.
    allowed = {"secrets": {"get", "create"}, "configmaps": {"get", "create", "patch"}}
    for manifest in by_kind(rendered["default"], "ClusterRole"):
        for rule in manifest["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
            assert "serviceaccounts" not in rule["resources"]
            for resource in {"secrets", "configmaps"} & set(rule["resources"]):
                assert set(rule["verbs"]) <= allowed[resource], (resource, rule["verbs"])
            assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"])


def test_refit_service_account_has_no_token_and_no_binding(rendered: dict[str, list[Manifest]]) -> None:
    for case in ("default", "namespaced", "digests-and-monitoring"):
        manifests = rendered[case]
        refit = [
            sa
            for sa in by_kind(manifests, "ServiceAccount")
            if sa["metadata"]["labels"]["app.kubernetes.io/component"] == "refit"
        ]
        assert refit, case
        for sa in refit:
            assert sa["automountServiceAccountToken"] is False
        names = {sa["metadata"]["name"] for sa in refit}
        for binding in by_kind(manifests, "RoleBinding") + by_kind(manifests, "ClusterRoleBinding"):
            assert not names & {s["name"] for s in binding["subjects"]}, binding["metadata"]["name"]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_images_default_to_the_app_version_and_take_digests(rendered: dict[str, list[Manifest]]) -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    (default,) = _containers(rendered["default"])
    assert default["image"] == f"ghcr.io/trtrefit/trt-refit-operator:{app_version}"
    # The operator reads its refit Job defaults from the environment (trtrefit.controller.config).
    assert _env(default)["TRTREFIT_WORKER_IMAGE"] == f"ghcr.io/trtrefit/trt-refit-worker:{app_version}"
    assert _env(default)["TRTREFIT_GPU_RESOURCE"] == "nvidia.com/gpu"
    (pinned,) = _containers(rendered["digests-and-monitoring"])
    assert pinned["image"] == "registry.example.com/trt/operator:0.1.0@sha256:" + "a" * 64
    assert pinned["imagePullPolicy"] == "Always"
    worker = f"registry.example.com/trt/worker:{app_version}@sha256:" + "b" * 64
    assert _env(pinned)["TRTREFIT_WORKER_IMAGE"] == worker
    assert _env(pinned)["A"] == "1"
    assert pinned["args"][-2:] == ["--verbose", "--some-flag"]


def test_metrics_service_and_service_monitor_select_the_operator(rendered: dict[str, list[Manifest]]) -> None:
    assert not by_kind(rendered["default"], "ServiceMonitor")
    manifests = rendered["digests-and-monitoring"]
    service = one(manifests, "Service")
    pod_labels = one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]
    ports = {p["name"]: p["containerPort"] for p in _containers(manifests)[0]["ports"]}
    assert ports == {"health": 8081, "metrics": 9090}
    monitor = one(manifests, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_externally_managed_renders_only_the_operator(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["externally-managed"]
    assert {m["kind"] for m in manifests} == {"Deployment"}
    deployment = one(manifests, "Deployment")
    assert deployment["metadata"]["name"] == "trtrefit"
    assert deployment["spec"]["replicas"] == 0
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "platform-operator"
    assert "metrics" not in {p["name"] for p in _containers(manifests)[0]["ports"]}


def test_crd_is_the_repository_crd_kept_on_uninstall(rendered: dict[str, list[Manifest]]) -> None:
    crd = one(rendered["default"], "CustomResourceDefinition")
    source = yaml.safe_load((REPO / "crds" / "trtmodel.yaml").read_text())
    assert crd["spec"] == source["spec"]
    assert crd["metadata"]["name"] == source["metadata"]["name"] == "trtmodels.trtrefit.dev"
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_chart_carries_the_repository_crd_verbatim() -> None:
    chart_copy = CHART / "files" / "crds" / "trtmodel.yaml"
    assert chart_copy.read_text() == (REPO / "crds" / "trtmodel.yaml").read_text(), (
        "the chart's CRD is stale: cp crds/trtmodel.yaml charts/trt-refit-operator/files/crds/trtmodel.yaml"
    )
