"""The InPlace strategy on the real control plane, with the real operator process and real `trtrefit serve`
processes: hack/fakekubelet.py runs each serving pod's own command and environment (from the pod spec the
test created, the Secret and ConfigMap the operator created) on a loopback address of its own, written as the
pod IP. The artifacts are local files (file:// URIs) made by the compile command's code (exported backend).

What is checked: the operator creates the token Secret and the desired-refit ConfigMap, owned by the model;
pods come up on the desired checkpoint; a bump reaches every pod without a restart (same pod UIDs); a
checkpoint that fails verification stops at the canary, which rolls itself back, while the other pod and the
ConfigMap are untouched; deleting the model lets garbage collection remove both objects."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from fakekubelet import FakeKubelet
from localcluster import free_port
from tests.integration.conftest import _FAILED, OperatorProcess
from tests.integration.world import condition, create_model, get_model, patch_spec, wait_events
from tests.kubehelpers import wait_for
from trtrefit.api.request import RefitRequest
from trtrefit.api.serving import DESIRED_KEY, TOKEN_KEY
from trtrefit.api.spec import TRTModelSpec
from trtrefit.api.trtmodel import API_VERSION, GROUP, KIND, PLURAL, VERSION
from trtrefit.controller.desired import desired_refit
from trtrefit.controller.inplace_objects import serving_env
from trtrefit.controller.naming import RETRY_ANNOTATION
from trtrefit.controller.pods import PodClient
from trtrefit.controller.serving_pods import PodState, live_pods

pytestmark = pytest.mark.integration

MODEL = "trtrefit.worker.samples:small_cnn"
NAME, SERVER = "tiny", "tiny-server"


@dataclass(frozen=True)
class Bundle:
    dir: Path
    checkpoints: dict[str, Path]

    def uri(self, name: str) -> str:
        return (self.dir / name).as_uri()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """small_cnn compiled for the exported backend; checkpoints a, b (good) and zero-head (constant outputs:
    fails verification)."""
    from safetensors.torch import save_file

    from trtrefit.worker.compile import CompileRequest, compile_bundle
    from trtrefit.worker.samples import build, write_checkpoint

    root = tmp_path_factory.mktemp("inplace-bundle")
    compile_bundle(CompileRequest(output=root, shapes=[(2, 3, 32, 32)], backend="exported", model=MODEL))
    files = {name: root / f"{name}.safetensors" for name in ("a", "b", "zero-head")}
    write_checkpoint(MODEL, 1, "none", files["a"])
    write_checkpoint(MODEL, 2, "none", files["b"])
    state = build(MODEL, 3).state_dict()
    state["8.weight"].zero_()
    state["8.bias"].zero_()
    save_file(state, str(files["zero-head"]))
    return Bundle(root, files)


@pytest.fixture
def kubelet(
    kube_api: client.ApiClient, namespace: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[FakeKubelet]:
    fake = FakeKubelet(api=kube_api, namespaces=[namespace], log_dir=tmp_path / "pods")
    with fake.running():
        yield fake
    if request.node.stash.get(_FAILED, False):
        sys.stderr.write(fake.pod_logs())


def serving_deployment(port: int, replicas: int = 2) -> dict[str, Any]:
    """Pods that run `trtrefit serve --model-name tiny`, reading the token and the desired refit through the
    environment the operator's objects provide (controller.inplace_objects.serving_env)."""
    labels = {"app": SERVER}
    container = {
        "name": "server",
        "image": "example/trtrefit:test",
        "command": ["trtrefit"],
        "args": ["serve", "--model-name", NAME, "--port", str(port), "--drain-seconds", "0"],
        "env": serving_env(NAME),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": SERVER},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    }


def in_place_model(bundle: Bundle, checkpoint: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": NAME},
        "spec": {
            "engine": {"uri": bundle.uri("engine.ep")},
            "source": {"uri": bundle.uri("source.pt2")},
            "checkpoint": {"uri": bundle.uri(checkpoint)},
            "verify": {"inputs": {"uri": bundle.uri("inputs.safetensors")}, "rtol": 1e-3, "atol": 1e-3},
            "serving": {"deploymentName": SERVER},
            "rollout": {"strategy": "InPlace", "port": port, "maxConcurrent": 1, "timeoutSeconds": 60},
        },
    }


def key_of(api: client.ApiClient, namespace: str) -> str:
    return desired_refit(TRTModelSpec.model_validate(get_model(api, namespace, NAME)["spec"])).key


def wait_ready_on(
    api: client.ApiClient, namespace: str, key: str, timeout: float = 180, pods: str = "2/2"
) -> dict[str, Any]:
    """The status once the model is Ready on refit `key` with `pods` (current/ready) counted. Ready alone is
    not enough while pods start: one ready pod that serves the key makes the model Ready (1/1)."""

    def ready() -> dict[str, Any] | None:
        model = get_model(api, namespace, NAME)
        status = model.get("status", {})
        fresh = status.get("observedGeneration") == model["metadata"]["generation"]
        serving = (status.get("serving") or {}).get("refitKey")
        counted = (status.get("pods") or {}).get("summary") == pods
        return status if fresh and status.get("phase") == "Ready" and serving == key and counted else None

    found = wait_for(ready, timeout=timeout, what=f"TRTModel {NAME} Ready on refit {key}", interval=0.5)
    assert found is not None
    return found


def pod_states(api: client.ApiClient, namespace: str, port: int) -> list[PodState]:
    """What each live serving pod reports, asked directly (not through the operator)."""
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"app={SERVER}")
    raw = [api.sanitize_for_serialization(p) for p in pods.items]
    client_ = PodClient()
    try:
        return client_.states(live_pods(raw), port, NAME)
    finally:
        client_.close()


def owned_by(obj: Any, uid: str) -> bool:
    return any(ref.uid == uid and ref.controller for ref in obj.metadata.owner_references or [])


def check_failed_canary(
    api: client.ApiClient, namespace: str, port: int, *, canary: str, serving_key: str
) -> None:
    """The bad checkpoint stopped at the canary, which rolled back; the other pod and the ConfigMap kept
    `serving_key`."""
    bad_key = key_of(api, namespace)

    def failed() -> dict[str, Any] | None:
        model = get_model(api, namespace, NAME)
        status = model.get("status", {})
        fresh = status.get("observedGeneration") == model["metadata"]["generation"]
        return status if fresh and status.get("phase") == "Failed" else None

    status = wait_for(failed, timeout=60, what="the bad checkpoint to fail at the canary")
    assert status is not None
    assert condition({"status": status}, "Stalled")["status"] == "True"
    assert condition({"status": status}, "Verified")["status"] == "False"
    assert status["lastRefit"]["canary"] == canary and status["lastRefit"]["outcome"] == "VerificationFailed"
    assert status["serving"]["refitKey"] == serving_key
    states = pod_states(api, namespace, port)
    assert [s.serves(serving_key) for s in states] == [
        True,
        True,
    ]  # the canary rolled back, the other untouched
    tried, other = states[0].state, states[1].state
    assert tried is not None and tried.last_refit is not None and tried.last_refit.key == bad_key
    assert other is not None and (other.last_refit is None or other.last_refit.key != bad_key)
    config_map = client.CoreV1Api(api).read_namespaced_config_map(f"{NAME}-trtrefit", namespace)
    assert RefitRequest.model_validate_json(config_map.data[DESIRED_KEY]).key == serving_key
    wait_events(api, namespace, "VerificationFailed", name=NAME)


def test_in_place_objects_start_pods_and_a_bump_reaches_every_pod_without_restarts(
    kube_api: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    kubelet: FakeKubelet,
    bundle: Bundle,
) -> None:
    core, apps = client.CoreV1Api(kube_api), client.AppsV1Api(kube_api)
    port = free_port()
    apps.create_namespaced_deployment(namespace, serving_deployment(port))
    model = create_model(kube_api, namespace, in_place_model(bundle, "a.safetensors", port))
    uid = model["metadata"]["uid"]

    # 1. The operator's objects, owned by the model; the ConfigMap asks for the desired refit.
    first_key = key_of(kube_api, namespace)
    secret = wait_for(lambda: core.read_namespaced_secret(f"{NAME}-trtrefit-token", namespace), what="Secret")
    config_map = wait_for(
        lambda: core.read_namespaced_config_map(f"{NAME}-trtrefit", namespace), what="ConfigMap"
    )
    assert owned_by(secret, uid) and owned_by(config_map, uid)
    assert len(secret.data[TOKEN_KEY]) >= 40  # base64 of secrets.token_urlsafe(32)
    assert RefitRequest.model_validate_json(config_map.data[DESIRED_KEY]).key == first_key

    # 2. The pods start on it (they wait for both objects), verify it and become Ready: the model is Ready.
    status = wait_ready_on(kube_api, namespace, first_key)
    assert status["pods"] == {"ready": 2, "current": 2, "summary": "2/2"}
    assert status["serving"]["checkpoint"]["uri"] == bundle.uri("a.safetensors")
    assert {condition({"status": status}, k)["status"] for k in ("Ready", "Verified", "RolledOut")} == {
        "True"
    }
    uids = sorted(
        p.metadata.uid for p in core.list_namespaced_pod(namespace, label_selector=f"app={SERVER}").items
    )

    # 3. A bump: the canary first, then the ConfigMap, then the other pod; no pod restarts.
    patch_spec(kube_api, namespace, {"checkpoint": {"uri": bundle.uri("b.safetensors")}}, name=NAME)
    second_key = key_of(kube_api, namespace)
    status = wait_ready_on(kube_api, namespace, second_key, timeout=60)
    states = pod_states(kube_api, namespace, port)
    assert [s.serves(second_key) for s in states] == [True, True]
    assert sorted(s.pod.uid for s in states) == uids
    canary = states[0].pod.name  # the first ready pod by name
    record = status["lastRefit"]
    assert (record["key"], record["canary"], record["outcome"]) == (second_key, canary, "Passed")
    assert record["verification"]["passed"] is True and record["rollout"]["outcome"] == "Complete"
    assert status["history"][0]["checkpoint"]["uri"] == bundle.uri("a.safetensors")
    config_map = core.read_namespaced_config_map(f"{NAME}-trtrefit", namespace)
    assert RefitRequest.model_validate_json(config_map.data[DESIRED_KEY]).key == second_key
    wait_events(
        kube_api, namespace, "RefitStarted", "RefitPassed", "RolloutStarted", "RolloutComplete", name=NAME
    )

    # 4. A checkpoint that fails verification: the canary rolls back; the other pod and the ConfigMap keep b.
    patch_spec(kube_api, namespace, {"checkpoint": {"uri": bundle.uri("zero-head.safetensors")}}, name=NAME)
    check_failed_canary(kube_api, namespace, port, canary=canary, serving_key=second_key)

    # 4b. `kubectl annotate trtm NAME trtrefit.dev/retry=1`: the canary is asked once more (its answer echoes
    # the attempt); the checkpoint is still bad, so it fails again, recorded under that attempt.
    client.CustomObjectsApi(kube_api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, NAME, {"metadata": {"annotations": {RETRY_ANNOTATION: "1"}}}
    )

    def retried() -> dict[str, Any] | None:
        record = get_model(kube_api, namespace, NAME).get("status", {}).get("lastRefit") or {}
        return record if record.get("retryToken") == "1" else None

    record = wait_for(retried, timeout=60, what="the failed canary retried under retry=1")
    assert (record["canary"], record["outcome"]) == (canary, "VerificationFailed")
    tried = pod_states(kube_api, namespace, port)[0].state
    assert tried is not None and tried.last_refit is not None and tried.last_refit.attempt == "1"
    check_failed_canary(kube_api, namespace, port, canary=canary, serving_key=second_key)

    # 5. Deleting the model: garbage collection removes the Secret and the ConfigMap it owns.
    client.CustomObjectsApi(kube_api).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME)

    def collected() -> bool:
        names = {s.metadata.name for s in core.list_namespaced_secret(namespace).items}
        names |= {c.metadata.name for c in core.list_namespaced_config_map(namespace).items}
        return not {f"{NAME}-trtrefit-token", f"{NAME}-trtrefit"} & names

    wait_for(collected, timeout=60, what="the Secret and ConfigMap garbage collected")
