"""RBAC truth: the real operator, holding only a token of the chart's own ServiceAccount, takes a TRTModel
from a new checkpoint to Ready, then to Stalled on a failed verification, then through deletion.

The chart is installed with helm into a control plane of its own (the chart owns the CRD and ClusterRoles).
The operator runs here as a subprocess with the arguments and environment of the Deployment helm created
(ports moved to free local ones) and a kubeconfig whose only credential is a TokenRequest token for the
operator ServiceAccount. kwok runs no containers, so this test plays the kubelet for the refit pod: it writes
the pod's terminated container and the worker's result (trtrefit.api.result.RefitResult) as the termination
message through the pods/status subresource, as a kubelet would. A verb missing from the chart shows up as a
TRTModel that never gets there, and as a 403 in the operator's log, which must have none.

Every TRTModel status the operator wrote is also run through the chart's Argo CD health check and through the
real kstatus library Flux waits with.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

import lifeline
from localcluster import LocalCluster, free_port, write_kubeconfig
from tests.chart.argocd import argocd_health
from tests.chart.helmtool import CHART, helm_on_cluster, set_args
from tests.chart.kstatus import kstatus
from tests.integration.world import finish_pod, passed, verification_failed
from tests.kubehelpers import wait_for
from trtrefit.api.result import exit_code
from trtrefit.api.spec import TRTModelSpec
from trtrefit.controller.desired import desired_refit
from trtrefit.controller.naming import job_name

pytestmark = pytest.mark.integration

GROUP, VERSION, PLURAL = "trtrefit.dev", "v1alpha1", "trtmodels"
ENGINE_SHA256_ANNOTATION = "trtrefit.dev/engine-sha256"
OLD_ENGINE = "s3://models/tiny/engine.ep"


@dataclass
class Operator:
    """`trtrefit operator` as the chart's Deployment would run it, with only its ServiceAccount's token."""

    process: subprocess.Popen[bytes]
    log: Path
    metrics_port: int
    health_port: int

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _install(
    cluster: LocalCluster,
    admin: client.ApiClient,
    home: Path,
    *,
    release: str,
    namespace: str,
    values: dict[str, Any],
) -> None:
    core = client.CoreV1Api(admin)
    with contextlib.suppress(client.ApiException):
        core.create_namespace(
            client.V1Namespace(
                metadata=client.V1ObjectMeta(
                    name=namespace, labels={"pod-security.kubernetes.io/enforce": "restricted"}
                )
            )
        )
    helm_on_cluster(
        cluster.env(),
        home,
        [
            "install",
            release,
            str(CHART),
            "--namespace",
            namespace,
            "--wait",
            "--timeout",
            "120s",
            *set_args(values),
        ],
    )


def _start_operator(
    admin: client.ApiClient, cluster: LocalCluster, workdir: Path, release: str, namespace: str
) -> Operator:
    """Run the chart's operator container locally: its args and env from the Deployment helm created."""
    deployment = client.AppsV1Api(admin).read_namespaced_deployment(
        f"{release}-trt-refit-operator", namespace
    )
    pod = deployment.spec.template.spec
    (container,) = pod.containers
    token = (
        client.CoreV1Api(admin)
        .create_namespaced_service_account_token(
            pod.service_account_name,
            namespace,
            client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
            ),
        )
        .status.token
    )
    kubeconfig = workdir / f"{release}.kubeconfig"
    write_kubeconfig(kubeconfig, cluster.server, cluster.ca_file, token, user=pod.service_account_name)

    metrics_port, health_port = free_port(), free_port()
    moved = {
        "--metrics-port": f"--metrics-port={metrics_port}",
        "--liveness": f"--liveness=http://127.0.0.1:{health_port}/healthz",
    }
    args = [moved.get(arg.split("=", 1)[0], arg) for arg in container.args]
    env = {e.name: e.value for e in container.env if e.value is not None}
    env["POD_NAMESPACE"] = namespace
    # Nothing of the admin's reaches the process: its only credential is the ServiceAccount token. KUBECONFIG
    # too, because kopf's own login reads the kubeconfig location the kubernetes library fixed at import.
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "KUBERNETES_"))}
    base["KUBECONFIG"] = str(kubeconfig)
    log = workdir / f"{release}-operator.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            lifeline.command([sys.executable, "-m", "trtrefit.cli", *args, f"--kubeconfig={kubeconfig}"]),
            env={**base, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return Operator(process, log, metrics_port, health_port)


def _ensure_crd(admin: client.ApiClient) -> None:
    """The CRD as a cluster admin applies it when no release owns it (here: when this test runs alone)."""
    ext = client.ApiextensionsV1Api(admin)
    crd = yaml.safe_load((CHART / "files" / "crds" / "trtmodel.yaml").read_text())
    with contextlib.suppress(client.ApiException):
        ext.create_custom_resource_definition(crd)
    wait_for(
        lambda: any(
            c.type == "Established" and c.status == "True"
            for c in ext.read_custom_resource_definition(crd["metadata"]["name"]).status.conditions
        ),
        what="the CRD to be established",
    )


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body.decode()


def _serving_deployment(namespace: str) -> client.V1Deployment:
    labels = {"app": "tiny-server"}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name="tiny-server", namespace=namespace),
        spec=client.V1DeploymentSpec(
            replicas=2,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    containers=[
                        client.V1Container(
                            name="server",
                            image="example/server:1",
                            env=[client.V1EnvVar(name="TRT_ENGINE_URI", value=OLD_ENGINE)],
                        )
                    ]
                ),
            ),
        ),
    )


def _model(name: str, checkpoint: str, refit_account: str | None) -> dict[str, Any]:
    refit_job: dict[str, Any] = {"serviceAccountName": refit_account} if refit_account else {}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TRTModel",
        "metadata": {"name": name},
        "spec": {
            "engine": {"uri": OLD_ENGINE},
            "source": {"uri": "s3://models/tiny/source.pt2"},
            "checkpoint": {"uri": checkpoint},
            "verify": {"generate": [{"shape": [2, 4]}], "atol": 0.01, "rtol": 0.01},
            "publish": {"uri": "s3://models/tiny/refits/"},
            "refitJob": refit_job,
            "serving": {"deploymentName": "tiny-server", "containerName": "server"},
        },
    }


@dataclass
class Watcher:
    """Reads a TRTModel through the admin client and keeps every distinct status the operator wrote."""

    custom: client.CustomObjectsApi
    namespace: str
    name: str
    seen: list[dict[str, Any]] = field(default_factory=list)

    def read(self) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, self.name
        )
        if obj.get("status") and (not self.seen or self.seen[-1].get("status") != obj["status"]):
            self.seen.append(obj)
        return obj

    def condition(self, kind: str) -> dict[str, Any]:
        conditions = {c["type"]: c for c in self.read().get("status", {}).get("conditions", [])}
        condition: dict[str, Any] = conditions.get(kind, {})
        return condition

    def wait_phase(self, phase: str, timeout: float = 60) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            obj = self.read()
            status = obj.get("status", {})
            if (
                status.get("phase") == phase
                and status.get("observedGeneration") == obj["metadata"]["generation"]
            ):
                return obj
            return None

        return wait_for(reached, timeout=timeout, what=f"TRTModel {self.name} phase {phase}")


def _refit_pod(core: client.CoreV1Api, namespace: str, exclude: set[str]) -> client.V1Pod:
    """The refit Job's pod once kwok has it running (scheduled on a fake GPU node)."""

    def running() -> client.V1Pod | None:
        for pod in core.list_namespaced_pod(namespace).items:
            owners = {o.kind for o in pod.metadata.owner_references or []}
            if "Job" in owners and pod.metadata.name not in exclude and pod.status.phase == "Running":
                return pod
        return None

    return wait_for(running, timeout=60, what="the refit pod to run")


def _no_permission_errors(operator: Operator) -> None:
    log = operator.output()
    for sign in ("403", "Forbidden", "forbidden", "Not enough permissions"):
        assert sign not in log, f"the operator hit an RBAC refusal ({sign!r}):\n{log[-4000:]}"


def _squat_job_name(admin: client.ApiClient, namespace: str, spec: dict[str, Any]) -> str:
    """Take the refit Job's name before the operator does (a suspended Job of another owner): the operator's
    create gets 409 and it reads the Job to see whose it is (the `get` verb), then waits for it to go."""
    name = job_name("tiny", desired_refit(TRTModelSpec.model_validate(spec)).key)
    squatter = client.V1Job(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1JobSpec(
            suspend=True,
            template=client.V1PodTemplateSpec(
                spec=client.V1PodSpec(
                    restart_policy="Never", containers=[client.V1Container(name="c", image="example/other:1")]
                )
            ),
        ),
    )
    client.BatchV1Api(admin).create_namespaced_job(namespace, squatter)
    return name


def _drive_one_model(
    admin: client.ApiClient,
    operator: Operator,
    namespace: str,
    refit_account: str | None,
    *,
    squat: bool = False,
) -> list[dict[str, Any]]:
    """New checkpoint -> Ready with the Deployment patched; bump -> Stalled; delete. Returns statuses seen.
    With `squat`, the refit Job's name is first taken by someone else's Job."""
    core, apps, custom = client.CoreV1Api(admin), client.AppsV1Api(admin), client.CustomObjectsApi(admin)
    apps.create_namespaced_deployment(namespace, _serving_deployment(namespace))
    wait_for(
        lambda: (
            (apps.read_namespaced_deployment_status("tiny-server", namespace).status.available_replicas or 0)
            == 2
        ),
        timeout=60,
        what="the serving Deployment to be available",
    )
    first = _model("tiny", "s3://ckpt/tiny/step-1.safetensors", refit_account)
    squatter = _squat_job_name(admin, namespace, first["spec"]) if squat else None
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, first)
    model = Watcher(custom, namespace, "tiny")
    if squatter is not None:
        wait_for(
            lambda: "belongs to another owner" in json.dumps(model.read().get("status", {})),
            timeout=60,
            what="the operator to report the Job name taken",
        )
        client.BatchV1Api(admin).delete_namespaced_job(squatter, namespace, propagation_policy="Background")

    # 1. The operator creates the refit Job; its pod runs as the chart's token-less refit ServiceAccount.
    pod = _refit_pod(core, namespace, exclude=set())
    if refit_account:
        assert pod.spec.service_account_name == refit_account
    model.wait_phase("Refitting")
    finish_pod(admin, pod, passed(pod, "a" * 64).to_json(), 0)

    # 2. A verified refit: the Deployment's pod template gets the new engine and rolls; the model is Ready.
    ready = model.wait_phase("Ready", timeout=90)
    assert model.condition("Ready")["status"] == "True"
    template = apps.read_namespaced_deployment("tiny-server", namespace).spec.template
    (server,) = template.spec.containers
    assert {e.name: e.value for e in server.env}["TRT_ENGINE_URI"] == f"s3://models/tiny/refits/{'a' * 64}.ep"
    assert template.metadata.annotations[ENGINE_SHA256_ANNOTATION] == "a" * 64
    assert ready["status"]["serving"]["engine"]["sha256"] == "a" * 64
    events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=tiny").items
    assert {"RefitStarted", "RefitPassed"} <= {e.reason for e in events}

    # 3. A checkpoint that fails verification: Stalled, serving untouched.
    custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        "tiny",
        {"spec": {"checkpoint": {"uri": "s3://ckpt/tiny/step-2.safetensors"}}},
    )
    second = _refit_pod(core, namespace, exclude={pod.metadata.name})
    failed = verification_failed()
    finish_pod(admin, second, failed.to_json(), exit_code(failed.outcome))
    model.wait_phase("Failed", timeout=60)
    assert model.condition("Stalled")["status"] == "True"
    assert model.condition("Verified")["status"] == "False"
    served = apps.read_namespaced_deployment("tiny-server", namespace).spec.template
    assert served.metadata.annotations[ENGINE_SHA256_ANNOTATION] == "a" * 64

    # 4. Deletion: the operator deletes its Jobs and lets the TRTModel go (finalizer).
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "tiny")

    def gone() -> bool:
        names = [
            m["metadata"]["name"]
            for m in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
        ]
        return "tiny" not in names

    wait_for(gone, timeout=60, what="the TRTModel to be deleted")
    batch = client.BatchV1Api(admin)
    wait_for(
        lambda: (
            not [
                j for j in batch.list_namespaced_job(namespace).items if j.metadata.deletion_timestamp is None
            ]
        ),
        timeout=60,
        what="refit Jobs deleted",
    )
    _no_permission_errors(operator)
    return model.seen


def test_cluster_wide_release_drives_a_model_with_only_its_token(
    own_cluster: LocalCluster, admin: client.ApiClient, tmp_path: Path
) -> None:
    client.CoreV1Api(admin).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="vision")))
    _install(
        own_cluster,
        admin,
        tmp_path / "helm",
        release="trt",
        namespace="trtrefit-system",
        values={"refit": {"serviceAccount": {"namespaces": ["vision"]}}},
    )
    operator = _start_operator(admin, own_cluster, tmp_path, "trt", "trtrefit-system")
    try:
        # The probe and metrics ports the chart wires are the ones the process serves.
        wait_for(
            lambda: _get(f"http://127.0.0.1:{operator.health_port}/healthz") is not None,
            timeout=60,
            what="the operator's liveness endpoint",
        )
        seen = _drive_one_model(admin, operator, "vision", refit_account="trt-trt-refit-operator-refit")
        assert "trtrefit" in _get(f"http://127.0.0.1:{operator.metrics_port}/metrics")
    finally:
        operator.stop()
        print(operator.output()[-3000:])

    # Argo CD's view of what the operator really wrote: Progressing, then Healthy, then Degraded.
    health = [argocd_health(obj)["status"] for obj in seen]
    assert health[0] == "Progressing"
    assert "Healthy" in health
    assert health[-1] == "Degraded"
    assert health.index("Healthy") < len(health) - 1
    # Flux's view (the real kstatus): Current exactly when Ready=True, Failed exactly when Stalled=True, so a
    # Kustomization waiting on the model neither passes early nor misses a failed verification.
    for obj, computed in zip(seen, kstatus(seen), strict=True):
        conditions = {c["type"]: c["status"] for c in obj["status"]["conditions"]}
        fresh = obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
        assert (computed["status"] == "Current") == (fresh and conditions.get("Ready") == "True"), obj[
            "status"
        ]
        assert (computed["status"] == "Failed") == (fresh and conditions.get("Stalled") == "True"), obj[
            "status"
        ]
        assert computed["status"] in {"InProgress", "Current", "Failed"}, computed


def test_namespaced_release_drives_a_model_in_its_namespace_only(
    own_cluster: LocalCluster, admin: client.ApiClient, tmp_path: Path
) -> None:
    core, custom = client.CoreV1Api(admin), client.CustomObjectsApi(admin)
    for name in ("team-a", "team-b"):
        with contextlib.suppress(client.ApiException):
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    # A second release: the CRD belongs to the first one (or the cluster), so crds.install is off.
    _install(
        own_cluster,
        admin,
        tmp_path / "helm",
        release="team",
        namespace="team-ops",
        values={"watchNamespaces": ["team-a"], "crds": {"install": False}},
    )
    _ensure_crd(admin)
    elsewhere = custom.create_namespaced_custom_object(
        GROUP, VERSION, "team-b", PLURAL, _model("other", "s3://ckpt/o/step-1.safetensors", None)
    )
    operator = _start_operator(admin, own_cluster, tmp_path, "team", "team-ops")
    try:
        _drive_one_model(admin, operator, "team-a", refit_account="team-trt-refit-operator-refit", squat=True)
        # Outside its namespaces the operator neither acts nor could: no status, no Job.
        other = custom.get_namespaced_custom_object(GROUP, VERSION, "team-b", PLURAL, "other")
        assert "status" not in other and other["metadata"]["uid"] == elsewhere["metadata"]["uid"]
        assert not client.BatchV1Api(admin).list_namespaced_job("team-b").items
    finally:
        operator.stop()
        print(operator.output()[-3000:])
