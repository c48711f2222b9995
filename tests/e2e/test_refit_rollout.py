"""What a user sees, read from the API: the TRTModel's status and Events, and the serving Deployment."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from kubernetes import client

from demo import FIRST, SECOND, serving_deployment, settled_on, trtmodel
from fakekubelet import FakeKubelet
from inplace import Outputs
from tests.e2e.conftest import Answers, Artifacts
from tests.integration.conftest import OperatorProcess
from tests.integration.world import (
    condition,
    events_of,
    get_model,
    patch_spec,
    refit_jobs,
    wait_events,
    wait_phase,
)
from tests.kubehelpers import wait_for

pytestmark = pytest.mark.e2e

NAME, SERVER, PUBLISH = "demo", "demo-server", "s3://models/demo/refits/"
SOURCE = "s3://models/demo/source.pt2"


def _setup(api: client.ApiClient, namespace: str, checkpoint: str = FIRST) -> None:
    client.AppsV1Api(api).create_namespaced_deployment(namespace, serving_deployment())
    body = trtmodel(checkpoint, "default")
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        "trtrefit.dev", "v1alpha1", namespace, "trtmodels", body
    )


def _template(api: client.ApiClient, namespace: str) -> dict[str, Any]:
    """The serving Deployment's whole pod template, as the API returns it (plain JSON types)."""
    template = client.AppsV1Api(api).read_namespaced_deployment(SERVER, namespace).spec.template
    return dict(api.sanitize_for_serialization(template))


def _engine_env(template: dict[str, Any]) -> str:
    (env,) = [e["value"] for e in template["spec"]["containers"][0]["env"] if e["name"] == "TRT_ENGINE_URI"]
    return str(env)


def _ready_on(api: client.ApiClient, namespace: str, checkpoint: str) -> dict[str, Any]:
    """The status once the model is Ready serving `checkpoint` for its current generation."""
    serves = settled_on(checkpoint)

    def settled() -> dict[str, Any] | None:
        model = get_model(api, namespace, NAME)
        return dict(model["status"]) if serves(model) else None

    return wait_for(settled, timeout=120, what=f"Ready serving {checkpoint}")


def _served_engine_is_content_addressed(artifacts: Artifacts, status: dict[str, Any]) -> str:
    engine = status["serving"]["engine"]
    assert engine["uri"] == f"{PUBLISH}{engine['sha256']}.ep"
    data = artifacts.fs().cat_file(engine["uri"])
    assert hashlib.sha256(data).hexdigest() == engine["sha256"]
    return str(engine["uri"])


def _rolled_into_the_template(
    api: client.ApiClient, namespace: str, artifacts: Artifacts, status: dict[str, Any]
) -> str:
    """The served engine is content-addressed and is what the serving pod template names and pins."""
    engine = _served_engine_is_content_addressed(artifacts, status)
    template = _template(api, namespace)
    assert _engine_env(template) == engine
    assert (
        template["metadata"]["annotations"]["trtrefit.dev/engine-sha256"]
        == status["serving"]["engine"]["sha256"]
    )
    return engine


def _published_outputs(artifacts: Artifacts, uri: str, inputs: Outputs, tmp_path: Path) -> list[np.ndarray]:
    """The published program, read back from S3 and run as torch.export loads it (no trtrefit code)."""
    local = tmp_path / f"{uri.rsplit('/', 1)[-1]}.pt2"  # torch.export.load warns about any other suffix
    local.write_bytes(artifacts.fs().cat_file(uri))
    with warnings.catch_warnings():  # torch's own pt2 reader wraps read-only bytes (torch.frombuffer)
        warnings.filterwarnings("ignore", "The given buffer is not writable", UserWarning)
        program = torch.export.load(str(local))
    with torch.no_grad():
        out = program.module()(*(torch.from_numpy(np.array(v)) for v in inputs.values()))  # a writable copy
    return [o.numpy() for o in (out if isinstance(out, tuple | list) else (out,))]


def _answers_like_eager(published: list[np.ndarray], eager: Outputs) -> None:
    """The published program's outputs equal eager PyTorch's (the model + load_state_dict) on the checkpoint
    it was refitted to; the exported backend swaps tensors, so fp32 rounding is all that may differ."""
    assert len(published) == len(eager)
    for got, (name, want) in zip(published, eager.items(), strict=True):
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)


def _pod_engines(api: client.ApiClient, namespace: str) -> set[str]:
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector="app=demo-server").items
    return {
        env.value
        for pod in pods
        if pod.metadata.deletion_timestamp is None
        for env in pod.spec.containers[0].env
        if env.name == "TRT_ENGINE_URI"
    }


@pytest.mark.usefixtures("operator", "kubelet")
def test_first_rollout_then_a_checkpoint_bump_rolls_the_new_engine(
    kube_api: client.ApiClient,
    namespace: str,
    artifacts: Artifacts,
    answers: Answers,
    tmp_path: Path,
) -> None:
    _setup(kube_api, namespace)
    first = _ready_on(kube_api, namespace, FIRST)
    first_engine = _rolled_into_the_template(kube_api, namespace, artifacts, first)
    verification = first["lastRefit"]["verification"]
    assert verification["passed"] is True and verification["maxAbsError"] <= 0.01
    first_outputs = _published_outputs(artifacts, first_engine, answers.inputs, tmp_path)
    _answers_like_eager(first_outputs, answers.references["step-1"])

    patch_spec(kube_api, namespace, {"checkpoint": {"uri": SECOND}}, name=NAME)
    second = _ready_on(kube_api, namespace, SECOND)
    second_engine = _rolled_into_the_template(kube_api, namespace, artifacts, second)
    assert second_engine != first_engine
    _answers_like_eager(
        _published_outputs(artifacts, second_engine, answers.inputs, tmp_path), answers.references["step-2"]
    )
    wait_for(
        lambda: _pod_engines(kube_api, namespace) == {second_engine},
        timeout=60,
        what="every serving pod on the second engine",
    )
    posted = ["RolloutComplete", "RefitPassed"] * 2
    reasons = [reason for _, reason, _ in wait_events(kube_api, namespace, *posted, name=NAME)]
    assert reasons.count("RolloutComplete") == 2 and reasons.count("RefitPassed") == 2


def _stalled_and_untouched(
    api: client.ApiClient, namespace: str, before: dict[str, Any], *reason_texts: str
) -> dict[str, Any]:
    """Failed and Stalled for the current generation, saying why, and the pod template exactly as before."""
    status = wait_phase(api, namespace, "Failed", timeout=120, name=NAME)
    model = get_model(api, namespace, NAME)
    stalled = condition(model, "Stalled")
    assert stalled["status"] == "True"
    for text in reason_texts:
        assert text in stalled["message"], stalled["message"]
    assert condition(model, "Ready")["status"] == "False"
    # Field by field: the engine env var, its digest annotation and everything else in the template.
    assert _template(api, namespace) == before, "a failed refit must never touch what is serving"
    return status


def _verification_failed(
    api: client.ApiClient, namespace: str, status: dict[str, Any], checkpoint: str
) -> str:
    """Verified=False with the measured numbers next to their tolerances; the newest such Event's text."""
    model = get_model(api, namespace, NAME)
    assert condition(model, "Verified")["status"] == "False"
    verification = status["lastRefit"]["verification"]
    assert verification["passed"] is False
    assert status["lastRefit"]["checkpoint"]["uri"] == checkpoint

    def posted() -> list[str] | None:  # kopf posts Events from a queue: one can trail the status write
        found = [m for _, reason, m in events_of(api, namespace, NAME) if reason == "VerificationFailed"]
        return [m for m in found if checkpoint in m] or None

    warnings = wait_for(posted, timeout=30, what=f"a VerificationFailed Event naming {checkpoint}")
    assert warnings is not None
    for tolerance in ("(atol 0.01)", "(rtol 0.01)", "(min 0.999)"):
        assert tolerance in warnings[-1], warnings[-1]
    return warnings[-1]


@pytest.mark.usefixtures("operator", "kubelet")
def test_bad_checkpoints_stall_without_touching_serving_and_a_good_one_recovers(
    kube_api: client.ApiClient,
    namespace: str,
    artifacts: Artifacts,
    wrong_eps_source: str,
) -> None:
    _setup(kube_api, namespace)
    served = _ready_on(kube_api, namespace, FIRST)["serving"]
    before = _template(kube_api, namespace)

    # A wrong shape: the worker names the key before any refit work.
    patch_spec(
        kube_api, namespace, {"checkpoint": {"uri": "s3://ckpt/demo/wrong-shape.safetensors"}}, name=NAME
    )
    status = _stalled_and_untouched(kube_api, namespace, before, "does not match engine")
    assert status["serving"] == served

    # A pinned digest the bytes do not have.
    wrong = "0" * 64
    patch_spec(kube_api, namespace, {"checkpoint": {"uri": SECOND, "sha256": wrong}}, name=NAME)
    _stalled_and_untouched(kube_api, namespace, before, "sha256")

    # Non-finite weights: the reference itself is NaN, so nothing can pass; Verified=False with the numbers.
    nonfinite = "s3://ckpt/demo/nonfinite.safetensors"
    patch_spec(kube_api, namespace, {"checkpoint": {"uri": nonfinite, "sha256": None}}, name=NAME)
    status = _stalled_and_untouched(
        kube_api, namespace, before, f"checkpoint {nonfinite} failed verification"
    )
    _verification_failed(kube_api, namespace, status, nonfinite)
    assert "output_0: the reference output holds NaN/inf" in status["lastRefit"]["message"], status[
        "lastRefit"
    ]
    assert status["serving"] == served

    # Finite but wrong: a source program whose BatchNorm eps is not the engine's. Every weight is finite
    # and of the right shape, so only verification can tell; it fails on the tolerance, serving untouched.
    patch_spec(
        kube_api, namespace, {"source": {"uri": wrong_eps_source}, "checkpoint": {"uri": SECOND}}, name=NAME
    )
    status = _stalled_and_untouched(kube_api, namespace, before, f"checkpoint {SECOND} failed verification")
    _verification_failed(kube_api, namespace, status, SECOND)
    assert "exceeds atol 0.01 + rtol 0.01" in status["lastRefit"]["message"], status["lastRefit"]
    assert status["lastRefit"]["verification"]["maxAbsError"] > 0.01
    assert status["serving"] == served

    # Recovery: the right source and a good checkpoint roll out.
    patch_spec(kube_api, namespace, {"source": {"uri": SOURCE}}, name=NAME)
    recovered = _ready_on(kube_api, namespace, SECOND)
    _rolled_into_the_template(kube_api, namespace, artifacts, recovered)


def test_deleting_the_trtmodel_cleans_up_its_jobs(
    kube_api: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    kubelet: FakeKubelet,
    artifacts: Artifacts,
) -> None:
    _setup(kube_api, namespace)
    _ready_on(kube_api, namespace, FIRST)
    assert refit_jobs(kube_api, namespace)
    client.CustomObjectsApi(kube_api).delete_namespaced_custom_object(
        "trtrefit.dev", "v1alpha1", namespace, "trtmodels", NAME
    )
    wait_for(lambda: not refit_jobs(kube_api, namespace), timeout=60, what="refit Jobs deleted")
    wait_for(
        lambda: (
            not client.CustomObjectsApi(kube_api).list_namespaced_custom_object(
                "trtrefit.dev", "v1alpha1", namespace, "trtmodels"
            )["items"]
        ),
        timeout=60,
        what="the TRTModel gone",
    )
    # The serving Deployment is the user's: it stays, on the last good engine.
    assert client.AppsV1Api(kube_api).read_namespaced_deployment(SERVER, namespace)
