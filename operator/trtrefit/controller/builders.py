"""Pure builders of what the operator writes: the refit Job and the serving Deployment's patches."""

from __future__ import annotations

from typing import Any

from trtrefit.api.jobspec import Device, RefitJobSpec
from trtrefit.api.quantity import byte_size, quantity
from trtrefit.api.request import refit_request
from trtrefit.api.spec import TRTModelSpec
from trtrefit.api.status import Digest, ServingStatus
from trtrefit.api.trtmodel import API_VERSION, KIND, TRTModel
from trtrefit.controller.config import OperatorConfig
from trtrefit.controller.desired import DesiredRefit
from trtrefit.controller.naming import (
    CHECKPOINT_ANNOTATION,
    CHECKPOINT_SHA256_ANNOTATION,
    ENGINE_SHA256_ANNOTATION,
    INSTANCE_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    MODEL_ANNOTATION,
    MODEL_LABEL,
    MODEL_UID_LABEL,
    NAME_LABEL,
    REFIT_APP,
    REFIT_KEY_ANNOTATION,
    REFIT_KEY_LABEL,
    REVERTED_ANNOTATION,
    WORKER_CONTAINER,
    job_name,
)
from trtrefit.controller.views import DeploymentView
from trtrefit.logs import FORMAT_ENV

Manifest = dict[str, Any]
VERIFICATION_FAILED_EXIT_CODE = 2  # the worker's exit code when the outputs miss the tolerances


def worker_args(spec: TRTModelSpec, key: str, max_artifact_bytes: int | None = None) -> list[str]:
    """`refit --request <RefitRequest JSON>`: the worker's command line for this spec."""
    return ["refit", "--request", refit_request(spec, key, max_artifact_bytes).wire()]


SCRATCH_ARTIFACTS = 4  # engine, source, checkpoint and the refitted program share the scratch volume


def max_artifact_bytes(job: RefitJobSpec, config: OperatorConfig) -> int:
    """The per-artifact download cap: the spec's, else the operator's (both validated quantities)."""
    text = job.max_artifact_size or config.max_artifact_size
    size = byte_size(text)
    if size is None:  # the CRD's pattern and the config's check make this unreachable
        raise ValueError(f"max artifact size {text!r} is not a byte quantity")
    return size


def refit_labels(model: TRTModel, key: str) -> dict[str, str]:
    """Labels of a refit Job and its pods; the model's uid tells its Jobs from a namesake's."""
    return {
        NAME_LABEL: REFIT_APP,
        INSTANCE_LABEL: model.metadata.name,
        MANAGED_BY_LABEL: MANAGED_BY,
        MODEL_LABEL: model.metadata.name,
        MODEL_UID_LABEL: model.metadata.uid or "",
        REFIT_KEY_LABEL: key,
    }


def owner_reference(model: TRTModel) -> Manifest:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": model.metadata.name,
        "uid": model.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _resources(job: RefitJobSpec, gpu_resource: str, scratch_bytes: int) -> Manifest:
    limits = dict(job.resources.limits)
    requests = dict(job.resources.requests)
    # Scheduled where the downloads fit; a user's own ephemeral-storage request wins.
    requests.setdefault("ephemeral-storage", quantity(scratch_bytes))
    gpus = job.gpus if job.gpus is not None else (0 if job.device is Device.CPU else 1)
    if gpus > 0:
        limits[gpu_resource] = str(gpus)
        if gpu_resource in requests:
            requests[gpu_resource] = str(gpus)
    return {key: value for key, value in (("limits", limits), ("requests", requests)) if value}


SCRATCH_VOLUME = "scratch"  # the refit pod's /tmp: downloads and the refitted program before upload


def scratch_bytes(job: RefitJobSpec, config: OperatorConfig) -> int:
    return SCRATCH_ARTIFACTS * max_artifact_bytes(job, config)


def _env(job: RefitJobSpec, config: OperatorConfig) -> list[Manifest]:
    """spec.refitJob.env, and the operator's log format when that is not text and the spec sets none."""
    env = [variable.wire() for variable in job.env]
    if config.log_format != "text" and all(variable.name != FORMAT_ENV for variable in job.env):
        env.append({"name": FORMAT_ENV, "value": config.log_format})
    return env


def _container(model: TRTModel, key: str, image: str, config: OperatorConfig) -> Manifest:
    job = model.spec.refit_job
    container: Manifest = {
        "name": WORKER_CONTAINER,
        "image": image,
        "command": list(job.command or config.worker_command),
        "args": worker_args(model.spec, key, max_artifact_bytes(job, config)),
        "env": _env(job, config),
        "envFrom": [source.wire() for source in job.env_from],
        "resources": _resources(job, job.gpu_resource or config.gpu_resource, scratch_bytes(job, config)),
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        # Restricted Pod Security: the worker image runs as a non-root user and writes only under /tmp.
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": SCRATCH_VOLUME, "mountPath": "/tmp"}],
    }
    if job.image_pull_policy is not None:
        container["imagePullPolicy"] = job.image_pull_policy.value
    return {key: value for key, value in container.items() if value not in ([], {})}


def _pod_spec(model: TRTModel, key: str, image: str, config: OperatorConfig) -> Manifest:
    job = model.spec.refit_job
    scratch = quantity(scratch_bytes(job, config))
    pod: Manifest = {
        "restartPolicy": "Never",
        "containers": [_container(model, key, image, config)],
        # The worker never calls the Kubernetes API: no token in the pod, whichever ServiceAccount it runs as.
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumes": [{"name": SCRATCH_VOLUME, "emptyDir": {"sizeLimit": scratch}}],
        "nodeSelector": dict(job.node_selector),
        "tolerations": [t.wire() for t in job.tolerations],
    }
    if job.service_account_name:
        pod["serviceAccountName"] = job.service_account_name
    if job.priority_class_name:
        pod["priorityClassName"] = job.priority_class_name
    if job.affinity is not None:
        pod["affinity"] = job.affinity.wire()
    return {key: value for key, value in pod.items() if value not in ([], {})}


def worker_image(model: TRTModel, config: OperatorConfig) -> str | None:
    """The refit Job's image: the spec's, else the operator's default."""
    return model.spec.refit_job.image or config.worker_image


def build_refit_job(model: TRTModel, desired: DesiredRefit, image: str, config: OperatorConfig) -> Manifest:
    """The refit Job: deterministic name, owned by the model, one pod that runs the worker once.

    A failed verification (exit code 2) fails the Job at once; other errors are retried up to
    backoffLimit; evicted pods do not count."""
    job = model.spec.refit_job
    # The user's labels (a Kueue queue name, say) and annotations go on the Job and its pod; ours win.
    labels = {**job.labels, **refit_labels(model, desired.key)}
    annotations = {**job.annotations, CHECKPOINT_ANNOTATION: desired.checkpoint.uri}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(model.metadata.name, desired.key),
            "namespace": model.metadata.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner_reference(model)],
        },
        "spec": {
            "backoffLimit": job.backoff_limit,
            "activeDeadlineSeconds": job.active_deadline_seconds,
            "ttlSecondsAfterFinished": job.ttl_seconds_after_finished,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": WORKER_CONTAINER,
                            "operator": "In",
                            "values": [VERIFICATION_FAILED_EXIT_CODE],
                        },
                    },
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]
            },
            "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": _pod_spec(model, desired.key, image, config),
            },
        },
    }


def _template_patch(
    deployment: DeploymentView,
    *,
    env_var: str,
    engine: Digest,
    checkpoint: Digest | None,
    key: str | None,
    deployment_annotations: dict[str, str | None],
) -> Manifest:
    engine_env: Manifest = {"name": env_var, "value": engine.uri}
    if deployment.env_from_source:
        engine_env["valueFrom"] = None  # a literal value replaces it
    return {
        "metadata": {"resourceVersion": deployment.resource_version, "annotations": deployment_annotations},
        "spec": {
            "template": {
                "metadata": {
                    "annotations": {
                        ENGINE_SHA256_ANNOTATION: engine.sha256,
                        REFIT_KEY_ANNOTATION: key,
                        CHECKPOINT_ANNOTATION: checkpoint.uri if checkpoint else None,
                        CHECKPOINT_SHA256_ANNOTATION: checkpoint.sha256 if checkpoint else None,
                    }
                },
                "spec": {"containers": [{"name": deployment.container, "env": [engine_env]}]},
            }
        },
    }


def build_rollout_patch(
    model: TRTModel, deployment: DeploymentView, engine: Digest, checkpoint: Digest, key: str
) -> Manifest:
    """Strategic-merge patch that points the pod template at the refitted engine: the env var plus digest
    annotations, which changes the template and so rolls the pods. It is conditional on the Deployment's
    resourceVersion, so a concurrent change makes it fail with 409 instead of racing."""
    return _template_patch(
        deployment,
        env_var=model.spec.serving.engine_env_var,
        engine=engine,
        checkpoint=checkpoint,
        key=key,
        deployment_annotations={MODEL_ANNOTATION: model.metadata.name, REVERTED_ANNOTATION: None},
    )


def build_revert_patch(
    model: TRTModel, deployment: DeploymentView, to: ServingStatus, failed_key: str
) -> Manifest:
    """Strategic-merge patch that puts the previously serving engine back and records which refit failed,
    in one write, so a restarted operator does not roll the failed engine out again."""
    return _template_patch(
        deployment,
        env_var=model.spec.serving.engine_env_var,
        engine=to.engine,
        checkpoint=to.checkpoint,
        key=to.refit_key,
        deployment_annotations={MODEL_ANNOTATION: model.metadata.name, REVERTED_ANNOTATION: failed_key},
    )
