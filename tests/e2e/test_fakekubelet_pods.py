"""The fake kubelet's serving pods on the real control plane, without the operator: a Deployment of
`trtrefit serve` whose pods read the desired refit and the token through their environment. What the InPlace
suite stands on: kwok leaves these pods alone, each runs as a real process on its own loopback address, its
environment comes from the pod spec only, it is Ready only once it serves, it restarts, it stops."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from demo import FIRST, S3_CREDENTIALS, trtmodel
from fakekubelet import FakeKubelet
from inplace import ask_pod, is_ready, live_pods, restarts, serving_deployment, serving_state, which
from tests.e2e.conftest import Answers, Artifacts
from tests.kubehelpers import wait_for
from trtrefit.api.request import refit_request
from trtrefit.api.serving import DESIRED_ENV, DESIRED_KEY, TOKEN_ENV, TOKEN_KEY
from trtrefit.api.spec import TRTModelSpec

pytestmark = pytest.mark.e2e

MODEL, APP, KEY, TOKEN = "kb", "kb-server", "0123abcd", "s3cr3t-token"
S3_ENV = {*S3_CREDENTIALS, "AWS_ENDPOINT_URL"}  # the s3-credentials Secret's keys (envFrom)


def _desired(checkpoint: str) -> str:
    """The RefitRequest the operator would keep in the ConfigMap, from the demo's InPlace TRTModel."""
    spec = TRTModelSpec.model_validate(trtmodel(checkpoint, "default", "InPlace")["spec"])
    return refit_request(spec, key=KEY).wire()


def _config_map(api: client.ApiClient, namespace: str) -> None:
    body = client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=f"{MODEL}-trtrefit"), data={DESIRED_KEY: _desired(FIRST)}
    )
    client.CoreV1Api(api).create_namespaced_config_map(namespace, body)


def _token(api: client.ApiClient, namespace: str) -> None:
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name=f"{MODEL}-trtrefit-token"), string_data={TOKEN_KEY: TOKEN}
    )
    client.CoreV1Api(api).create_namespaced_secret(namespace, body)


def _waiting(pod: client.V1Pod) -> str:
    """The container's waiting reason and message, '' when it is not waiting."""
    statuses = pod.status.container_statuses or []
    waiting = statuses[0].state.waiting if statuses else None
    return f"{waiting.reason}: {waiting.message}" if waiting is not None else ""


def _ready_pods(api: client.ApiClient, namespace: str, count: int) -> list[client.V1Pod]:
    def ready() -> list[client.V1Pod] | None:
        pods = live_pods(api, namespace, APP)
        return pods if len(pods) == count and all(is_ready(p) for p in pods) else None

    pods: list[client.V1Pod] = wait_for(ready, timeout=180, what=f"{count} serving pods Ready")
    return pods


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def _process(kubelet: FakeKubelet, pod: client.V1Pod) -> Any:
    serving = kubelet.serving_pod(pod.metadata.uid)
    assert serving is not None and serving.process is not None, f"no process for {pod.metadata.name}"
    return serving.process


def test_pods_wait_for_their_config_then_serve_verified_on_their_own_address(
    *,
    kube_api: client.ApiClient,
    namespace: str,
    kubelet: FakeKubelet,
    artifacts: Artifacts,
    answers: Answers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Set only in this test runner's environment: neither may reach a pod. The endpoint the pods use comes
    # from the Secret their envFrom names, so a wrong one here would fail the refit if it leaked.
    monkeypatch.setenv("TRTREFIT_RUNNER_ONLY", "leaked")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://runner-only.invalid:1")
    client.AppsV1Api(kube_api).create_namespaced_deployment(namespace, serving_deployment(APP, MODEL, 2))

    # No ConfigMap yet: the kubelet cannot build the environment; kwok did not make the pods Ready either.
    def waiting_for(text: str) -> list[client.V1Pod] | None:
        pods = live_pods(kube_api, namespace, APP)
        return pods if len(pods) == 2 and all(text in _waiting(p) for p in pods) else None

    pods = wait_for(
        lambda: waiting_for('configmap "kb-trtrefit" not found'), timeout=60, what="config errors"
    )
    assert all(_waiting(p).startswith("CreateContainerConfigError") and not is_ready(p) for p in pods)
    assert all(p.status.pod_ip and p.status.pod_ip.startswith("127.0.0.") for p in pods)
    _config_map(kube_api, namespace)
    wait_for(
        lambda: waiting_for('secret "kb-trtrefit-token" not found'), timeout=60, what="the token missing"
    )
    _token(kube_api, namespace)

    pods = _ready_pods(kube_api, namespace, 2)
    ips = {p.status.pod_ip for p in pods}
    assert len(ips) == 2 and "127.0.0.1" not in ips, ips
    for pod in pods:
        assert [ip.ip for ip in pod.status.pod_ips] == [pod.status.pod_ip]
        state = serving_state(pod.status.pod_ip, MODEL)
        assert state.ready and state.checkpoint is not None
        assert (state.checkpoint.uri, state.checkpoint.key) == (FIRST, KEY)
        assert which(ask_pod(pod.status.pod_ip, MODEL, answers.inputs), answers.references) == "step-1"
        assert restarts(pod) == 0

        # The process's environment is the pod spec's: the Secret's and ConfigMap's values, no variable of
        # this test process (pytest sets PYTEST_CURRENT_TEST in ours).
        env = _environ(_process(kubelet, pod).pid)
        assert env[TOKEN_ENV] == TOKEN and env[DESIRED_ENV] == _desired(FIRST)
        assert env["AWS_ENDPOINT_URL"] == artifacts.endpoint and env["HOSTNAME"] == pod.metadata.name
        assert "TRTREFIT_RUNNER_ONLY" not in env
        assert set(env) == {"PATH", "HOME", "HOSTNAME", "LANG", TOKEN_ENV, DESIRED_ENV, *S3_ENV}


def test_an_exited_container_restarts_in_its_pod_and_a_deleted_pod_stops_its_process(
    kube_api: client.ApiClient, namespace: str, kubelet: FakeKubelet, answers: Answers
) -> None:
    _config_map(kube_api, namespace)
    _token(kube_api, namespace)
    client.AppsV1Api(kube_api).create_namespaced_deployment(namespace, serving_deployment(APP, MODEL, 1))
    (pod,) = _ready_pods(kube_api, namespace, 1)
    process = _process(kubelet, pod)
    os.kill(process.pid, signal.SIGKILL)

    def restarted() -> client.V1Pod | None:
        (again,) = live_pods(kube_api, namespace, APP)
        return again if restarts(again) == 1 and is_ready(again) else None

    again = wait_for(restarted, timeout=120, what="the container restarted and Ready again")
    assert (again.metadata.uid, again.status.pod_ip) == (pod.metadata.uid, pod.status.pod_ip)
    last = again.status.container_statuses[0].last_state.terminated
    assert last.exit_code == 128 + signal.SIGKILL and last.reason == "Error"
    assert _process(kubelet, again).pid != process.pid
    assert which(ask_pod(again.status.pod_ip, MODEL, answers.inputs), answers.references) == "step-1"

    second = _process(kubelet, again)
    client.CoreV1Api(kube_api).delete_namespaced_pod(again.metadata.name, namespace)
    wait_for(lambda: second.poll() is not None, timeout=60, what="the deleted pod's process stopped")
    assert second.returncode == 0, "SIGTERM: the server drains and exits cleanly"
    (replacement,) = _ready_pods(kube_api, namespace, 1)
    assert replacement.metadata.uid != again.metadata.uid and restarts(replacement) == 0
