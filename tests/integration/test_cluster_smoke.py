"""The local control plane is a real one: scheduling, rollouts, Jobs, CEL validation, RBAC."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from localcluster import GPU_NODES, ClusterError, LocalCluster, Tools, _alive, read_versions
from tests.kubehelpers import wait_for

pytestmark = pytest.mark.integration

LABELS = {"app": "smoke"}


def _deployment(name: str, replicas: int) -> client.V1Deployment:
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=LABELS),
            strategy=client.V1DeploymentStrategy(
                type="RollingUpdate",
                rolling_update=client.V1RollingUpdateDeployment(max_surge=1, max_unavailable=0),
            ),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=LABELS, annotations={"rev": "1"}),
                spec=client.V1PodSpec(
                    containers=[client.V1Container(name="server", image="example/server:1")]
                ),
            ),
        ),
    )


def _ready_pods(core: client.CoreV1Api, namespace: str) -> list[client.V1Pod]:
    pods = core.list_namespaced_pod(namespace, label_selector="app=smoke").items
    return [
        p
        for p in pods
        if p.metadata.deletion_timestamp is None
        and any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))
    ]


def test_version_is_the_pinned_kubernetes(kube_api: client.ApiClient) -> None:
    version = client.VersionApi(kube_api).get_code()
    assert version.git_version == read_versions()["KUBERNETES_VERSION"]


def test_fake_gpu_nodes_advertise_gpus(kube_api: client.ApiClient) -> None:
    nodes = {n.metadata.name: n for n in client.CoreV1Api(kube_api).list_node().items}
    assert set(GPU_NODES) <= set(nodes)
    for name, product in GPU_NODES.items():
        assert nodes[name].status.allocatable["nvidia.com/gpu"] == "8"
        assert nodes[name].metadata.labels["nvidia.com/gpu.product"] == product


def test_deployment_becomes_ready_and_rolls(kube_api: client.ApiClient, namespace: str) -> None:
    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)
    apps.create_namespaced_deployment(namespace, _deployment("smoke", 3))
    first = wait_for(
        lambda: len(_ready_pods(core, namespace)) == 3 and _ready_pods(core, namespace),
        timeout=45,
        what="3 ready pods",
    )
    assert {p.spec.node_name for p in first} <= set(GPU_NODES)

    apps.patch_namespaced_deployment(
        "smoke", namespace, {"spec": {"template": {"metadata": {"annotations": {"rev": "2"}}}}}
    )

    def rolled() -> bool:
        d = apps.read_namespaced_deployment_status("smoke", namespace)
        pods = _ready_pods(core, namespace)
        return (
            d.status.observed_generation == d.metadata.generation
            and d.status.updated_replicas == 3
            and d.status.ready_replicas == 3
            and len(pods) == 3
            and all(p.metadata.annotations["rev"] == "2" for p in pods)
        )

    wait_for(rolled, timeout=60, what="rolling update to rev 2")
    new_names = {p.metadata.name for p in _ready_pods(core, namespace)}
    assert not new_names & {p.metadata.name for p in first}


def test_gpu_job_is_scheduled_on_a_gpu_node_and_completes(kube_api: client.ApiClient, namespace: str) -> None:
    batch, core = client.BatchV1Api(kube_api), client.CoreV1Api(kube_api)
    job = client.V1Job(
        metadata=client.V1ObjectMeta(name="gpu-job"),
        spec=client.V1JobSpec(
            backoff_limit=0,
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"kwok.trtrefit.dev/complete": "true"}),
                spec=client.V1PodSpec(
                    restart_policy="Never",
                    node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                    containers=[
                        client.V1Container(
                            name="work",
                            image="example/worker:1",
                            resources=client.V1ResourceRequirements(limits={"nvidia.com/gpu": "1"}),
                        )
                    ],
                ),
            ),
        ),
    )
    batch.create_namespaced_job(namespace, job)
    wait_for(
        lambda: (batch.read_namespaced_job_status("gpu-job", namespace).status.succeeded or 0) == 1,
        timeout=45,
        what="the GPU Job to succeed",
    )
    pods = core.list_namespaced_pod(namespace, label_selector="job-name=gpu-job").items
    assert [p.spec.node_name for p in pods] == ["gpu-h100-0"]


def test_pod_asking_for_more_gpus_than_any_node_stays_pending(
    kube_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="too-big"),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(
                    name="c",
                    image="x",
                    resources=client.V1ResourceRequirements(limits={"nvidia.com/gpu": "9"}),
                )
            ]
        ),
    )
    core.create_namespaced_pod(namespace, pod)

    def unschedulable() -> bool:
        conds = core.read_namespaced_pod_status("too-big", namespace).status.conditions or []
        return any(c.type == "PodScheduled" and c.reason == "Unschedulable" for c in conds)

    wait_for(unschedulable, timeout=30, what="PodScheduled=False/Unschedulable")


CRD_NAME = "widgets.smoke.trtrefit.dev"
CEL_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": CRD_NAME},
    "spec": {
        "group": "smoke.trtrefit.dev",
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}},
                                "x-kubernetes-validations": [
                                    {"rule": "self.min <= self.max", "message": "min must not exceed max"}
                                ],
                            }
                        },
                    }
                },
            }
        ],
    },
}


def test_crd_cel_rule_rejects_bad_object(kube_api: client.ApiClient, namespace: str) -> None:
    ext, custom = client.ApiextensionsV1Api(kube_api), client.CustomObjectsApi(kube_api)
    try:
        ext.create_custom_resource_definition(CEL_CRD)
    except ApiException as exc:
        assert exc.status == 409
    wait_for(
        lambda: any(
            c.type == "Established" and c.status == "True"
            for c in ext.read_custom_resource_definition(CRD_NAME).status.conditions
        ),
        what="CRD Established",
    )

    def create(lo: int, hi: int) -> object:
        body = {
            "apiVersion": "smoke.trtrefit.dev/v1",
            "kind": "Widget",
            "metadata": {"name": f"w-{lo}-{hi}"},
            "spec": {"min": lo, "max": hi},
        }
        return custom.create_namespaced_custom_object("smoke.trtrefit.dev", "v1", namespace, "widgets", body)

    wait_for(lambda: create(1, 2), what="a valid Widget to be accepted")
    with pytest.raises(ApiException) as info:
        create(5, 1)
    assert info.value.status == 422
    assert "min must not exceed max" in info.value.body


def test_rbac_limited_token_is_refused_what_it_lacks(
    kube_api: client.ApiClient, cluster: LocalCluster, namespace: str
) -> None:
    core, rbac = client.CoreV1Api(kube_api), client.RbacAuthorizationV1Api(kube_api)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="reader"))
    )
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="pod-reader"),
            rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get", "list"])],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="reader-reads-pods"),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="pod-reader"),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="reader", namespace=namespace)],
        ),
    )
    token = core.create_namespaced_service_account_token(
        "reader", namespace, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
    ).status.token

    conf = client.Configuration()
    conf.host, conf.ssl_ca_cert = cluster.server, str(cluster.ca_file)
    conf.api_key = {"authorization": f"Bearer {token}"}
    with client.ApiClient(conf) as limited:
        limited_core = client.CoreV1Api(limited)
        assert wait_for(
            lambda: limited_core.list_namespaced_pod(namespace) is not None,
            what="the RoleBinding to take effect",
        )
        for forbidden in (
            lambda: limited_core.list_namespaced_secret(namespace),
            lambda: limited_core.list_namespaced_pod("default"),
            lambda: limited_core.create_namespaced_config_map(
                namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="nope"))
            ),
        ):
            with pytest.raises(ApiException) as info:
                forbidden()  # type: ignore[no-untyped-call]  # the kubernetes client is untyped
            assert info.value.status == 403


def test_port_in_use_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        local = LocalCluster(workdir=tmp_path / "c", tools=Tools.from_cache(), apiserver_port=port)
        with pytest.raises(ClusterError, match=f"port {port} .* already in use"):
            local.start()
    assert not local.running_pids()


def test_a_second_cluster_starts_and_stops_leaving_no_process(tmp_path: Path) -> None:
    local = LocalCluster(workdir=tmp_path / "c", tools=Tools.from_cache())
    local.start()
    pids = local.running_pids()
    assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}
    local.stop()
    assert not any(_alive(pid) for pid in pids.values())
    assert not local.running_pids()
