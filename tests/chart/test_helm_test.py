"""`helm test` with the real helm on the session's control plane: the chart's test hook pod passes the API
server's restricted Pod Security admission, and helm reports it passed while the operator serves /metrics
and failed while it does not.

kwok runs no containers and hack/fakekubelet.py runs only refit and serving pods, so this test plays the
kubelet for the hook pod, as the refit-flow tests do for refit pods: it runs the pod's own command (`python -c
<script>`, with this venv's python for the image's) in the environment the pod spec gives, and writes the
exit code back to the pod's status. One thing it cannot take from the cluster is the network: there is no
cluster DNS or kube-proxy, so the pod's METRICS_URL (the metrics Service's DNS name) is pointed at the real
operator process's local /metrics port, which is what the Service routes to in a cluster."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest
from kubernetes import client

from containerenv import resolve_env
from fakekubelet import write_terminated
from tests.chart.helmtool import CHART, helm_binary, helm_env, set_args
from tests.integration import conftest as integration
from tests.integration.conftest import OperatorProcess
from tests.kubehelpers import wait_for

pytestmark = pytest.mark.integration

# The integration folder's fixtures: the CRD on the session cluster, the real operator process.
trtmodel_crd = integration.trtmodel_crd
operator = integration.operator

RELEASE = "hooked"
POD = f"{RELEASE}-trt-refit-operator-test-metrics"
RESTRICTED = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")}


def start_helm_test(operator: OperatorProcess, home: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(helm_binary()), "test", RELEASE, "--namespace", operator.namespace, "--timeout", "90s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**operator.cluster.env(), **helm_env(home)},
    )


def run_hook_pod(core: client.CoreV1Api, operator: OperatorProcess) -> tuple[int, str]:
    """Play the kubelet for the hook pod once kwok has made it Running; returns (exit code, output)."""

    def running() -> client.V1Pod | None:
        pods = core.list_namespaced_pod(operator.namespace, field_selector=f"metadata.name={POD}").items
        live = [p for p in pods if p.metadata.deletion_timestamp is None and p.status.pod_ip]
        return live[0] if live and live[0].status.phase == "Running" else None

    pod = wait_for(running, timeout=60, what=f"hook pod {POD} Running")
    assert pod is not None
    (container,) = pod.spec.containers
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    with tempfile.TemporaryDirectory() as home:
        env = resolve_env(core, pod, container, home=Path(home))
        env["METRICS_URL"] = f"http://127.0.0.1:{operator.metrics_port}/metrics"  # cluster DNS + Service
        assert container.command[0] == "python"
        proc = subprocess.run(
            [sys.executable, *container.command[1:], *(container.args or [])],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    output = proc.stdout + proc.stderr
    write_terminated(core, pod, started, proc.returncode, output[-4096:])
    return proc.returncode, output


def test_helm_test_passes_while_the_operator_serves_metrics_and_fails_when_not(
    kube_api: client.ApiClient, operator: OperatorProcess, tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube_api)
    core.patch_namespace(operator.namespace, {"metadata": {"labels": RESTRICTED}})
    values = {
        "crds": {"install": False},
        "watchNamespaces": [operator.namespace],
        "test": {"timeoutSeconds": 3},
    }
    install = helm(operator, tmp_path, "install", RELEASE, str(CHART), *set_args(values))
    assert install.returncode == 0, install.stderr
    assert f"helm test {RELEASE} --namespace {operator.namespace}" in install.stdout  # NOTES say how
    try:
        check_helm_test(core, operator, tmp_path)
    finally:  # the release's ClusterRole(Binding) would outlive the test namespace
        helm(operator, tmp_path, "uninstall", RELEASE)


def helm(operator: OperatorProcess, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm_binary()), "--namespace", operator.namespace, *args],
        capture_output=True,
        text=True,
        env={**operator.cluster.env(), **helm_env(home)},
        timeout=120,
        check=False,
    )


def check_helm_test(core: client.CoreV1Api, operator: OperatorProcess, tmp_path: Path) -> None:
    # What `helm install --wait` would wait for in a cluster: the operator is up (here: a local process).
    url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
    wait_for(
        lambda: urllib.request.urlopen(url, timeout=2).status == 200, timeout=60, what="operator /metrics"
    )
    tester = start_helm_test(operator, tmp_path)
    code, output = run_hook_pod(core, operator)
    assert (code, output.strip()) == (
        0,
        f"OK http://127.0.0.1:{operator.metrics_port}/metrics: the operator serves its metrics",
    )
    report, _ = tester.communicate(timeout=60)
    assert tester.returncode == 0, report
    assert f"TEST SUITE:     {POD}" in report and "Phase:          Succeeded" in report

    operator.stop()  # nothing answers on /metrics now: the hook pod fails, and so does helm test
    tester = start_helm_test(operator, tmp_path)
    code, output = run_hook_pod(core, operator)
    assert code == 1 and output.startswith("FAIL http://127.0.0.1:"), output
    report, _ = tester.communicate(timeout=60)
    assert tester.returncode != 0 and f"pod {POD} failed" in report, report
