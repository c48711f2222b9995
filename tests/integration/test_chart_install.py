"""`helm install`, `helm upgrade` and `helm uninstall` of the chart into a real control plane of its own.

A cluster of its own (started once for this module, ~4 s) because the chart owns cluster-scoped objects: the
CRD (templated, so upgrades reach it) and ClusterRoles. The session cluster's CRD belongs to other tests.
The operator namespace enforces the restricted Pod Security Standard, so the API server's own PodSecurity
admission decides whether the chart's pod may exist.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from localcluster import LocalCluster
from tests.chart.helmtool import CHART, REPO, helm_on_cluster, set_args
from tests.kubehelpers import wait_for

pytestmark = pytest.mark.integration

RELEASE = "trt"
NAMESPACE = "trtrefit-system"
FULLNAME = "trt-trt-refit-operator"
CRD_NAME = "trtmodels.trtrefit.dev"
RESTRICTED = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")}


@pytest.fixture(scope="module")
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("helm-home")


@pytest.fixture(scope="module")
def installed(own_cluster: LocalCluster, admin: client.ApiClient, helm_home: Path) -> str:
    """The chart installed with default values into a restricted namespace; returns helm's output."""
    core = client.CoreV1Api(admin)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE, labels=RESTRICTED)))
    result = helm_on_cluster(
        own_cluster.env(),
        helm_home,
        ["install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--wait", "--timeout", "120s"],
    )
    return result.stdout


def _crd(admin: client.ApiClient) -> Any:
    return client.ApiextensionsV1Api(admin).read_custom_resource_definition(CRD_NAME)


def test_install_establishes_the_crd_and_runs_the_operator_under_restricted_pss(
    installed: str, admin: client.ApiClient
) -> None:
    crd = _crd(admin)
    assert any(c.type == "Established" and c.status == "True" for c in crd.status.conditions)
    assert crd.metadata.annotations["helm.sh/resource-policy"] == "keep"
    assert crd.metadata.annotations["meta.helm.sh/release-name"] == RELEASE

    deployment = client.AppsV1Api(admin).read_namespaced_deployment(FULLNAME, NAMESPACE)
    assert deployment.status.available_replicas == 1  # helm --wait returned: the pod was admitted and Ready
    pods = client.CoreV1Api(admin).list_namespaced_pod(NAMESPACE).items
    assert [p.spec.service_account_name for p in pods] == [FULLNAME]
    assert "It watches TRTModels in all namespaces." in installed
    assert f"kubectl --namespace {NAMESPACE} rollout status deployment/{FULLNAME}" in installed


def test_restricted_namespace_really_refuses_a_privileged_pod(
    installed: str, admin: client.ApiClient
) -> None:
    """Guards the test above: the namespace's enforcement is on, so the operator pod passed a real check."""
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="root"),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="x")]),
    )
    with pytest.raises(ApiException) as info:
        client.CoreV1Api(admin).create_namespaced_pod(NAMESPACE, pod, dry_run="All")
    assert info.value.status == 403
    assert "violates PodSecurity" in info.value.body


def _token(admin: client.ApiClient, name: str, namespace: str) -> str:
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
    token: str = (
        client.CoreV1Api(admin).create_namespaced_service_account_token(name, namespace, request).status.token
    )
    return token


def _client_for(cluster: LocalCluster, token: str) -> client.ApiClient:
    conf = client.Configuration()
    conf.host, conf.ssl_ca_cert = cluster.server, str(cluster.ca_file)
    conf.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(conf)


def _can(
    api: client.ApiClient, verb: str, resource: str, group: str = "", namespace: str = "default"
) -> bool:
    review = client.V1SelfSubjectAccessReview(
        spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=client.V1ResourceAttributes(
                verb=verb,
                resource=resource.split("/", maxsplit=1)[0],
                group=group,
                namespace=namespace,
                subresource=resource.split("/")[1] if "/" in resource else None,
            )
        )
    )
    allowed: bool = client.AuthorizationV1Api(api).create_self_subject_access_review(review).status.allowed
    return allowed


def test_refit_service_account_has_no_api_rights(
    installed: str, own_cluster: LocalCluster, admin: client.ApiClient
) -> None:
    sa = client.CoreV1Api(admin).read_namespaced_service_account(f"{FULLNAME}-refit", NAMESPACE)
    assert sa.automount_service_account_token is False
    with _client_for(own_cluster, _token(admin, f"{FULLNAME}-refit", NAMESPACE)) as refit:
        for verb, resource, group in [
            ("get", "pods", ""),
            ("list", "secrets", ""),
            ("get", "trtmodels", "trtrefit.dev"),
            ("create", "jobs", "batch"),
            ("patch", "deployments", "apps"),
            ("create", "events", ""),
        ]:
            assert not _can(refit, verb, resource, group, NAMESPACE), (verb, resource)


def test_operator_service_account_gets_exactly_the_rendered_rights(
    installed: str, own_cluster: LocalCluster, admin: client.ApiClient
) -> None:
    with _client_for(own_cluster, _token(admin, FULLNAME, NAMESPACE)) as operator:
        assert _can(operator, "watch", "trtmodels", "trtrefit.dev", "anywhere")
        assert _can(operator, "patch", "trtmodels/status", "trtrefit.dev", "anywhere")
        assert _can(operator, "create", "jobs", "batch", "anywhere")
        assert _can(operator, "patch", "deployments", "apps", "anywhere")
        assert _can(operator, "get", "secrets", "", "anywhere")  # InPlace: the refit token, by name
        for verb, resource, group in [
            ("list", "secrets", ""),
            ("watch", "secrets", ""),
            ("update", "secrets", ""),
            ("list", "configmaps", ""),
            ("create", "pods", ""),
            ("delete", "deployments", "apps"),
            ("create", "deployments", "apps"),
            ("update", "customresourcedefinitions", "apiextensions.k8s.io"),
            ("delete", "trtmodels", "trtrefit.dev"),
            ("create", "rolebindings", "rbac.authorization.k8s.io"),
        ]:
            assert not _can(operator, verb, resource, group, "anywhere"), (verb, resource)


def test_flux_example_trtmodel_is_accepted_by_the_installed_crd(
    installed: str, admin: client.ApiClient
) -> None:
    model = yaml.safe_load((REPO / "examples" / "flux" / "models" / "resnet50.yaml").read_text())
    core, custom = client.CoreV1Api(admin), client.CustomObjectsApi(admin)
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=model["metadata"]["namespace"]))
    )
    created = custom.create_namespaced_custom_object(
        "trtrefit.dev", "v1alpha1", model["metadata"]["namespace"], "trtmodels", model, dry_run="All"
    )
    assert created["spec"]["checkpoint"] == model["spec"]["checkpoint"]


def test_upgrade_updates_the_crd_and_the_operator(
    installed: str, own_cluster: LocalCluster, admin: client.ApiClient, helm_home: Path, tmp_path: Path
) -> None:
    """A new chart version whose CRD gained a printer column: `helm upgrade` must serve it (a crds/ directory
    would not), and new values reach the operator's arguments."""
    chart = tmp_path / "trt-refit-operator"
    shutil.copytree(CHART, chart)
    crd_file = chart / "files" / "crds" / "trtmodel.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    version = crd["spec"]["versions"][0]
    version.setdefault("additionalPrinterColumns", []).append(
        {"name": "Upgraded", "type": "string", "jsonPath": ".metadata.name", "priority": 1}
    )
    crd_file.write_text(yaml.safe_dump(crd))
    chart_meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    chart_meta["version"] = "0.1.1"
    (chart / "Chart.yaml").write_text(yaml.safe_dump(chart_meta))

    helm_on_cluster(
        own_cluster.env(),
        helm_home,
        [
            "upgrade",
            RELEASE,
            str(chart),
            "--namespace",
            NAMESPACE,
            "--wait",
            "--timeout",
            "120s",
            *set_args({"operator": {"logLevel": "debug"}}),
        ],
    )
    columns = [c.name for c in _crd(admin).spec.versions[0].additional_printer_columns or []]
    assert "Upgraded" in columns
    deployment = client.AppsV1Api(admin).read_namespaced_deployment(FULLNAME, NAMESPACE)
    assert "--verbose" in deployment.spec.template.spec.containers[0].args
    assert deployment.metadata.labels["helm.sh/chart"] == "trt-refit-operator-0.1.1"
    assert deployment.spec.strategy.type == "Recreate"


def test_uninstall_keeps_the_crd_and_the_models(
    installed: str, own_cluster: LocalCluster, admin: client.ApiClient, helm_home: Path
) -> None:
    model = yaml.safe_load((REPO / "examples" / "flux" / "models" / "resnet50.yaml").read_text())
    namespace = model["metadata"]["namespace"]
    custom = client.CustomObjectsApi(admin)
    wait_for(lambda: client.CoreV1Api(admin).read_namespace(namespace), what="the models namespace")
    try:
        custom.create_namespaced_custom_object("trtrefit.dev", "v1alpha1", namespace, "trtmodels", model)
    except ApiException as exc:
        assert exc.status == 409

    helm_on_cluster(own_cluster.env(), helm_home, ["uninstall", RELEASE, "--namespace", NAMESPACE, "--wait"])

    assert _crd(admin).metadata.name == CRD_NAME
    assert custom.get_namespaced_custom_object("trtrefit.dev", "v1alpha1", namespace, "trtmodels", "resnet50")
    rbac = client.RbacAuthorizationV1Api(admin)
    assert not [r for r in rbac.list_cluster_role().items if r.metadata.name.startswith(FULLNAME)]
    assert not client.AppsV1Api(admin).list_namespaced_deployment(NAMESPACE).items
