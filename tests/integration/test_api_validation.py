"""The API server itself refuses bad TRTModels, naming the field: the CRD's structural schema, patterns,
enums and CEL rules. No operator runs here."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.integration.test_inplace_api import ROLLOUT_CASES
from tests.integration.world import create_model, get_model, trtmodel
from trtrefit.api.trtmodel import GROUP, PLURAL, VERSION

pytestmark = pytest.mark.integration

SECRET_KEY = {"name": "s", "key": "k"}
CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    (
        "bare state_dict without source",
        {"source": None},
        ["spec.source", "source is required when the checkpoint is a bare state_dict"],
    ),
    (
        "both inputs and generate",
        {"verify": {"inputs": {"uri": "s3://m/inputs.safetensors"}, "generate": [{"shape": [1, 8]}]}},
        ["spec.verify", "set at most one of verify.inputs and verify.generate"],
    ),
    (
        "seed without generated inputs",
        {"verify": {"inputs": {"uri": "s3://m/inputs.safetensors"}, "seed": 3}},
        ["spec.verify.seed", "only applies to generated inputs"],
    ),
    ("sha256 not hex", {"checkpoint": {"uri": "s3://c/x.safetensors", "sha256": "XYZ"}},
     ["spec.checkpoint.sha256"]),
    ("unknown URI scheme", {"engine": {"uri": "ftp://models/e.ep"}}, ["spec.engine.uri"]),
    ("publish over http", {"publish": {"uri": "https://models/refits/"}}, ["spec.publish.uri"]),
    ("tolerance out of range", {"verify": {"generate": [{"shape": [1]}], "minCosineSimilarity": 2}},
     ["spec.verify.minCosineSimilarity"]),
    ("negative rtol", {"verify": {"generate": [{"shape": [1]}], "rtol": -0.1}}, ["spec.verify.rtol"]),
    ("unknown dtype", {"verify": {"generate": [{"shape": [1], "dtype": "float8"}]}},
     ["spec.verify.generate[0].dtype", "Unsupported value"]),
    ("empty shape", {"verify": {"generate": [{"shape": []}]}}, ["spec.verify.generate[0].shape"]),
    ("zero dimension", {"verify": {"generate": [{"shape": [0, 3]}]}}, ["spec.verify.generate[0].shape[0]"]),
    ("low not below high", {"verify": {"generate": [{"shape": [1], "dtype": "int64", "low": 5, "high": 5}]}},
     ["spec.verify.generate[0]", "low must be less than high"]),
    ("GPUs on a CPU refit", {"refitJob": {"device": "cpu", "gpus": 1}},
     ["spec.refitJob.gpus", "requests no GPUs"]),
    ("unknown device", {"refitJob": {"device": "tpu"}}, ["spec.refitJob.device"]),
    ("label under our prefix", {"refitJob": {"labels": {"trtrefit.dev/model": "x"}}},
     ["spec.refitJob.labels", "no key under the operator's own trtrefit.dev/ prefix"]),
    ("annotation under our prefix", {"refitJob": {"annotations": {"x.trtrefit.dev/a": "b"}}},
     ["spec.refitJob.annotations", "no key under the operator's own trtrefit.dev/ prefix"]),
    ("bad label key", {"refitJob": {"labels": {"bad key": "x"}}}, ["spec.refitJob.labels", "qualified name"]),
    ("bad label value", {"refitJob": {"labels": {"team": "no spaces"}}}, ["spec.refitJob.labels.team"]),
    ("bad GPU resource", {"refitJob": {"gpuResource": "gpu"}}, ["spec.refitJob.gpuResource"]),
    ("bad priority class", {"refitJob": {"priorityClassName": "Low_Prio"}},
     ["spec.refitJob.priorityClassName"]),
    ("bad affinity operator",
     {"refitJob": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
         "nodeSelectorTerms": [{"matchExpressions": [{"key": "k", "operator": "Near"}]}]}}}}},
     ["spec.refitJob.affinity.nodeAffinity", "Unsupported value"]),
    ("env with value and valueFrom",
     {"refitJob": {"env": [{"name": "A", "value": "x", "valueFrom": {"secretKeyRef": SECRET_KEY}}]}},
     ["spec.refitJob.env[0].valueFrom", "set value or valueFrom, not both"]),
    ("envFrom with both sources",
     {"refitJob": {"envFrom": [{"secretRef": {"name": "s"}, "configMapRef": {"name": "c"}}]}},
     ["spec.refitJob.envFrom[0]", "set exactly one of secretRef and configMapRef"]),
    ("bad quantity", {"refitJob": {"resources": {"limits": {"memory": "lots"}}}},
     ["spec.refitJob.resources.limits"]),
    ("bad deployment name", {"serving": {"deploymentName": "Not_A_Name"}}, ["spec.serving.deploymentName"]),
    ("bad env var name", {"serving": {"deploymentName": "d", "engineEnvVar": "1BAD"}},
     ["spec.serving.engineEnvVar"]),
    ("missing checkpoint", {"checkpoint": None}, ["spec.checkpoint", "Required value"]),
]  # fmt: skip


def _body(change: dict[str, Any]) -> dict[str, Any]:
    body = trtmodel()
    for key, value in change.items():
        if value is None:
            body["spec"].pop(key)
        elif key == "verify":
            body["spec"]["verify"] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(body["spec"].get(key), dict):
            body["spec"][key] = {**body["spec"][key], **value}
        else:
            body["spec"][key] = value
    return body


CASES += ROLLOUT_CASES
CASES.append(
    (
        "credentials in a URI",
        {"checkpoint": {"uri": "https://user:secret@models.example/c.pt2"}},
        ["spec.checkpoint.uri", "no credentials in URIs", "spec.refitJob.envFrom"],
    )
)


@pytest.mark.parametrize(("case", "change", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_specs_are_refused_naming_the_field(
    *,
    kube_api: client.ApiClient,
    trtmodel_crd: str,
    namespace: str,
    case: str,
    change: dict[str, Any],
    expected: list[str],
) -> None:
    with pytest.raises(ApiException) as refused:
        create_model(kube_api, namespace, _body(change))
    assert refused.value.status == 422, case
    message = json.loads(refused.value.body)["message"]
    for part in expected:
        assert part in message, f"{case}: {part!r} not in {message!r}"


def test_long_names_are_refused(kube_api: client.ApiClient, trtmodel_crd: str, namespace: str) -> None:
    body = trtmodel(name="m" * 64)
    with pytest.raises(ApiException) as refused:
        create_model(kube_api, namespace, body)
    assert "at most 63 characters" in json.loads(refused.value.body)["message"]


def test_defaults_are_filled_in_by_the_api_server(
    kube_api: client.ApiClient, trtmodel_crd: str, namespace: str
) -> None:
    body = trtmodel()
    del body["spec"]["refitJob"]
    create_model(kube_api, namespace, body)
    spec = get_model(kube_api, namespace)["spec"]
    assert spec["verify"]["rtol"] == 0.01 and spec["verify"]["minCosineSimilarity"] == 0.999
    assert spec["serving"]["engineEnvVar"] == "TRT_ENGINE_URI" and spec["paused"] is False
    assert spec["refitJob"] == {
        "device": "auto", "backoffLimit": 2, "activeDeadlineSeconds": 3600, "ttlSecondsAfterFinished": 3600
    }  # fmt: skip


def test_status_is_a_subresource(kube_api: client.ApiClient, trtmodel_crd: str, namespace: str) -> None:
    body = trtmodel()
    body["status"] = {"phase": "Ready"}
    create_model(kube_api, namespace, body)
    assert "status" not in get_model(kube_api, namespace)  # the main resource ignores status
    custom = client.CustomObjectsApi(kube_api)
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "tiny", {"status": {"phase": "Ready", "unknownField": 1}},
        _content_type="application/merge-patch+json",
    )  # fmt: skip
    assert get_model(kube_api, namespace)["status"] == {"phase": "Ready"}  # unknown fields are pruned


def test_kubectl_get_columns_and_short_name(
    kube_api: client.ApiClient, trtmodel_crd: str, namespace: str
) -> None:
    create_model(kube_api, namespace, trtmodel())
    response = kube_api.call_api(
        f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}",
        "GET",
        header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
        auth_settings=["BearerToken"],
        _return_http_data_only=True,
        _preload_content=False,
    )
    table = json.loads(response.data)
    columns = [c["name"] for c in table["columnDefinitions"] if c["priority"] == 0]
    assert columns == ["Name", "Phase", "Checkpoint", "Ready", "Current", "Age"]
    (row,) = table["rows"]
    assert row["cells"][2] == "s3://ckpt/tiny/step-1.safetensors"
    resources = client.CustomObjectsApi(kube_api).get_api_resources(GROUP, VERSION)
    (resource,) = [r for r in resources.resources if r.name == PLURAL]
    assert resource.short_names == ["trtm"] and resource.categories == ["trtrefit"]


def test_a_model_without_verify_is_accepted_with_the_default_tolerances(
    kube_api: client.ApiClient, trtmodel_crd: str, namespace: str
) -> None:
    body = trtmodel()
    del body["spec"]["verify"]
    create_model(kube_api, namespace, body)
    verify = get_model(kube_api, namespace)["spec"]["verify"]
    assert verify == {"rtol": 0.01, "atol": 0.01, "minCosineSimilarity": 0.999}


def test_the_refit_job_with_batch_scheduling_fields_is_a_job_the_api_server_takes(
    kube_api: client.ApiClient, trtmodel_crd: str, namespace: str
) -> None:
    """Labels (Kueue's queue name), annotations, priorityClassName, affinity and a MIG resource, from a
    TRTModel the API server stored, into a Job it accepts (server-side dry run: admission included)."""
    from tests.unit.controller.test_refit_job import SCHEDULING
    from trtrefit.api.trtmodel import TRTModel
    from trtrefit.controller.builders import build_refit_job
    from trtrefit.controller.config import OperatorConfig
    from trtrefit.controller.desired import desired_refit

    body = trtmodel()
    body["spec"]["refitJob"] = copy.deepcopy(SCHEDULING)
    create_model(kube_api, namespace, body)
    stored = TRTModel.model_validate(get_model(kube_api, namespace))
    assert stored.spec.refit_job.affinity is not None and stored.spec.refit_job.labels == SCHEDULING["labels"]
    job = build_refit_job(stored, desired_refit(stored.spec), "worker:1", OperatorConfig())
    created = client.BatchV1Api(kube_api).create_namespaced_job(namespace, job, dry_run="All")
    pod = created.spec.template.spec
    assert created.metadata.labels["kueue.x-k8s.io/queue-name"] == "gpu-team"
    assert pod.priority_class_name == "batch-low"  # resolved to a priority for pods, not Job templates
    assert pod.affinity.node_affinity.required_during_scheduling_ignored_during_execution is not None
    assert pod.containers[0].resources.limits["nvidia.com/mig-1g.10gb"] == "1"
