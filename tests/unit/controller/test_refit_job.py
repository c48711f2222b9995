"""The refit Job built from a spec: a valid batch/v1 Job with the worker's exact command line."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest

from tests.unit.api.samples import model
from trtrefit.api.request import RefitRequest
from trtrefit.api.trtmodel import TRTModel
from trtrefit.controller.builders import build_refit_job, worker_args, worker_image
from trtrefit.controller.config import OperatorConfig
from trtrefit.controller.desired import desired_refit
from trtrefit.controller.naming import MODEL_UID_LABEL, REFIT_KEY_LABEL

CONFIG = OperatorConfig(worker_image="ghcr.io/example/trtrefit-worker:1")


def job_of(spec: dict[str, Any] | None = None, config: OperatorConfig = CONFIG) -> dict[str, Any]:
    m = model(spec)
    image = worker_image(m, config)
    assert image is not None
    return build_refit_job(m, desired_refit(m.spec), image, config)


def container(job: dict[str, Any]) -> dict[str, Any]:
    (only,) = job["spec"]["template"]["spec"]["containers"]
    return dict(only)


def test_the_job_is_a_valid_batch_v1_job() -> None:
    spec = {
        "refitJob": {
            "env": [
                {"name": "AWS_ENDPOINT_URL", "value": "http://minio:9000"},
                {
                    "name": "AWS_SECRET_ACCESS_KEY",
                    "valueFrom": {"secretKeyRef": {"name": "s3", "key": "secret"}},
                },
            ],
            "envFrom": [{"secretRef": {"name": "s3-creds"}}],
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            "resources": {"limits": {"memory": "32Gi"}, "requests": {"cpu": 4}},
            "serviceAccountName": "refit",
            "imagePullPolicy": "IfNotPresent",
        }
    }
    kubernetes_validate.validate(job_of(spec), "1.35.0", strict=True)


def request_of(m: TRTModel) -> dict[str, Any]:
    args = worker_args(m.spec, "0123abcd")
    assert args[:2] == ["refit", "--request"] and len(args) == 3
    RefitRequest.model_validate_json(args[2])  # the worker's own model accepts it
    body: dict[str, Any] = json.loads(args[2])
    return body


def test_the_worker_gets_the_spec_as_one_request_exactly() -> None:
    m = model(
        {
            "engine": {"sha256": "a" * 64},
            "source": {"sha256": "c" * 64},
            "checkpoint": {"sha256": "b" * 64},
            "verify": {"rtol": 0.02, "atol": 1e-05, "minCosineSimilarity": 0.99},
            "refitJob": {"device": "cuda"},
        }
    )
    assert request_of(m) == {
        "apiVersion": "trtrefit.dev/refit-request-v1",
        "key": "0123abcd",
        "engine": {"uri": "s3://models/resnet50/engine.ep", "sha256": "a" * 64},
        "source": {"uri": "s3://models/resnet50/source.pt2", "sha256": "c" * 64},
        "checkpoint": {"uri": "s3://ckpt/resnet50/step-1200.safetensors", "sha256": "b" * 64},
        "verify": {
            "generate": [{"shape": [8, 3, 224, 224], "dtype": "float32"}],
            "seed": 0,
            "rtol": 0.02,
            "atol": 1e-05,
            "minCosineSimilarity": 0.99,
        },
        "publish": {"uri": "s3://models/resnet50/refits/"},
        "device": "cuda",
        "refitPath": "auto",
    }


def test_inputs_file_replaces_generated_inputs() -> None:
    m = model(
        {"verify": {"generate": None, "seed": None, "inputs": {"uri": "file:///data/inputs.safetensors"}}}
    )
    verify = request_of(m)["verify"]
    assert verify["inputs"] == {"uri": "file:///data/inputs.safetensors"}
    assert "generate" not in verify and "seed" not in verify


def test_generated_inputs_keep_their_value_range() -> None:
    m = model({"verify": {"generate": [{"shape": [1, 16], "dtype": "int64", "low": 0, "high": 100}]}})
    assert request_of(m)["verify"]["generate"] == [
        {"shape": [1, 16], "dtype": "int64", "low": 0, "high": 100}
    ]


def test_job_is_named_by_the_refit_owned_by_the_model_and_labelled() -> None:
    m = model()
    job = job_of()
    key = desired_refit(m.spec).key
    assert job["metadata"]["name"] == f"resnet50-refit-{key[:10]}"
    (owner,) = job["metadata"]["ownerReferences"]
    assert owner == {
        "apiVersion": "trtrefit.dev/v1alpha1",
        "kind": "TRTModel",
        "name": "resnet50",
        "uid": m.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    labels = job["metadata"]["labels"]
    assert labels[MODEL_UID_LABEL] == m.metadata.uid and labels[REFIT_KEY_LABEL] == key
    assert job["spec"]["template"]["metadata"]["labels"] == labels


def test_the_pod_runs_the_worker_once_and_reports_through_its_termination_message() -> None:
    job = job_of(
        {"refitJob": {"backoffLimit": 3, "activeDeadlineSeconds": 900, "ttlSecondsAfterFinished": 60}}
    )
    spec, c = job["spec"], container(job)
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"]) == (
        3,
        900,
        60,
    )
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert c["name"] == "refit" and c["image"] == CONFIG.worker_image
    assert c["command"] == ["trtrefit"] and c["args"][0] == "refit"
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert c["terminationMessagePath"] == "/dev/termination-log"


def test_a_failed_verification_fails_the_job_without_retries() -> None:
    rules = job_of()["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "refit", "operator": "In", "values": [2]},
    }
    assert rules[1]["action"] == "Ignore"


@pytest.mark.parametrize(
    ("refit_job", "limits"),
    [
        ({}, {"nvidia.com/gpu": "1"}),
        ({"gpus": 2}, {"nvidia.com/gpu": "2"}),
        ({"device": "cpu"}, None),
        ({"gpus": 0}, None),
        ({"resources": {"limits": {"memory": "8Gi"}}}, {"memory": "8Gi", "nvidia.com/gpu": "1"}),
    ],
)
def test_gpu_requests(refit_job: dict[str, Any], limits: dict[str, str] | None) -> None:
    assert container(job_of({"refitJob": refit_job})).get("resources", {}).get("limits") == limits


def test_gpu_resource_name_comes_from_the_operator() -> None:
    config = OperatorConfig(worker_image="w", gpu_resource="amd.com/gpu")
    assert container(job_of(config=config))["resources"]["limits"] == {"amd.com/gpu": "1"}


def test_spec_image_and_command_override_the_operator_defaults() -> None:
    c = container(job_of({"refitJob": {"image": "mine:2", "command": ["python", "-m", "trtrefit.cli"]}}))
    assert c["image"] == "mine:2" and c["command"] == ["python", "-m", "trtrefit.cli"]
    assert worker_image(model(), OperatorConfig()) is None


def test_env_and_env_from_pass_through_unchanged() -> None:
    env = [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k", "optional": True}}}]
    c = container(
        job_of({"refitJob": {"env": env, "envFrom": [{"prefix": "S3_", "configMapRef": {"name": "c"}}]}})
    )
    assert c["env"] == env
    assert c["envFrom"] == [{"prefix": "S3_", "configMapRef": {"name": "c"}}]


def test_the_worker_logs_in_the_operators_format_unless_the_spec_says_otherwise() -> None:
    json_logs = OperatorConfig(worker_image="w", log_format="json")
    assert "env" not in container(job_of())  # text, the default: nothing added
    assert container(job_of(config=json_logs))["env"] == [{"name": "TRTREFIT_LOG_FORMAT", "value": "json"}]
    own = [{"name": "TRTREFIT_LOG_FORMAT", "value": "text"}]
    assert container(job_of({"refitJob": {"env": own}}, config=json_logs))["env"] == own


def test_the_refit_pod_meets_restricted_pod_security_and_carries_no_api_token() -> None:
    pod = job_of({"refitJob": {"serviceAccountName": "trt-refit"}})["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    worker = pod["containers"][0]
    assert worker["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    # The root filesystem is read-only: downloads go to an emptyDir on /tmp.
    (mount,) = worker["volumeMounts"]
    assert mount["mountPath"] == "/tmp"
    assert {"name": mount["name"], "emptyDir": {"sizeLimit": "32Gi"}} in pod["volumes"]


def test_downloads_are_bounded_and_the_scratch_volume_is_sized_and_requested() -> None:
    default = job_of()
    args = container(default)["args"]
    assert RefitRequest.model_validate_json(args[2]).max_artifact_bytes == 8 * 1024**3
    assert container(default)["resources"]["requests"]["ephemeral-storage"] == "32Gi"
    custom = job_of({"refitJob": {"maxArtifactSize": "500Mi", "resources": {"requests": {"cpu": 2}}}})
    assert RefitRequest.model_validate_json(container(custom)["args"][2]).max_artifact_bytes == 500 * 1024**2
    assert container(custom)["resources"]["requests"] == {"cpu": "2", "ephemeral-storage": "2000Mi"}
    assert {"name": "scratch", "emptyDir": {"sizeLimit": "2000Mi"}} in custom["spec"]["template"]["spec"][
        "volumes"
    ]
    own = job_of({"refitJob": {"resources": {"requests": {"ephemeral-storage": "100Gi"}}}})
    assert container(own)["resources"]["requests"]["ephemeral-storage"] == "100Gi"


KUEUE = {"kueue.x-k8s.io/queue-name": "gpu-team"}
REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"
AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["H200"]}
                    ]
                }
            ]
        },
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 10, "preference": {"matchExpressions": [{"key": "pool", "operator": "Exists"}]}}
        ],
    },
    "podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {
                "weight": 50,
                "podAffinityTerm": {
                    "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "trtrefit-refit"}},
                    "topologyKey": "kubernetes.io/hostname",
                },
            }
        ]
    },
}
SCHEDULING = {
    "labels": {**KUEUE, "team": "vision"},
    "annotations": {"example.com/cost-center": "ml-42"},
    "priorityClassName": "batch-low",
    "affinity": AFFINITY,
    "gpuResource": "nvidia.com/mig-1g.10gb",
}


def test_batch_scheduling_fields_reach_the_job_and_its_pod() -> None:
    job = job_of({"refitJob": SCHEDULING})
    kubernetes_validate.validate(job, "1.35.0", strict=True)
    for metadata in (job["metadata"], job["spec"]["template"]["metadata"]):
        assert metadata["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-team"
        assert metadata["labels"]["team"] == "vision"
        assert metadata["annotations"]["example.com/cost-center"] == "ml-42"
        assert REFIT_KEY_LABEL in metadata["labels"]  # ours are still there
    pod = job["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "batch-low"
    assert pod["affinity"] == AFFINITY  # copied unchanged, no empty lists added
    assert container(job)["resources"]["limits"]["nvidia.com/mig-1g.10gb"] == "1"
    assert "nvidia.com/gpu" not in container(job)["resources"]["limits"]


def test_the_operators_labels_win_over_a_users_of_the_same_key() -> None:
    job = job_of({"refitJob": {"labels": {"app.kubernetes.io/name": "mine"}}})
    assert job["metadata"]["labels"]["app.kubernetes.io/name"] == "trtrefit-refit"


@pytest.mark.parametrize(
    ("refit_job", "error"),
    [
        ({"labels": {"trtrefit.dev/model": "x"}}, "no key under the operator's own trtrefit.dev/ prefix"),
        ({"annotations": {"a.trtrefit.dev/x": "y"}}, "no key under the operator's own trtrefit.dev/ prefix"),
        ({"labels": {"bad key!": "x"}}, "not a qualified name"),
        ({"labels": {"team": "no spaces"}}, "is not a label value"),
        ({"gpuResource": "gpu"}, "gpuResource"),
        ({"affinity": {"nodeAffinity": {REQUIRED: {}}}}, "nodeSelectorTerms"),
        ({"affinity": {"podAffinity": {REQUIRED: [{}]}}}, "topologyKey"),
    ],
)  # fmt: skip
def test_bad_scheduling_fields_are_refused_naming_the_field(refit_job: dict[str, Any], error: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=error):
        model({"refitJob": refit_job})
