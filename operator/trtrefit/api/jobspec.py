"""`TRTModel.spec.refitJob`: how the refit Job's pod runs. The shapes follow the core/v1 types they are
copied into (EnvVar, EnvFromSource, Toleration, ResourceRequirements), so the API server checks them at
admission, not when the Job is created."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from kube_custom_resource import schema
from pydantic import ConfigDict, Field, field_validator

from trtrefit.api.affinity import Affinity
from trtrefit.api.base import (
    DNS_SUBDOMAIN_PATTERN,
    ENV_VAR_NAME_PATTERN,
    QUANTITY_PATTERN,
    Model,
    Rule,
    cel,
    list_map,
)
from trtrefit.api.quantity import BYTE_SIZE_PATTERN

Quantity = schema.IntOrString

# Label and annotation keys: an optional DNS-subdomain prefix and a name (Kubernetes' qualified names).
QUALIFIED_NAME_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# An extended resource: nvidia.com/gpu, or a MIG profile such as nvidia.com/mig-1g.10gb.
RESOURCE_NAME_PATTERN = (
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
OWN_PREFIX = "trtrefit.dev/"  # keys the operator sets and reads on its Jobs; a user's must not collide
OWN_KEY = f"key under the operator's own {OWN_PREFIX} prefix"


def _metadata_map(kind: str, value_schema: dict[str, Any]) -> dict[str, Any]:
    """Schema of a labels/annotations map: bounded, qualified keys, none under trtrefit.dev/."""
    return {
        "maxProperties": 32,
        "additionalProperties": {"type": "string", **value_schema},
        **cel(
            Rule(
                f"self.all(k, !k.startsWith('{OWN_PREFIX}') && !k.contains('.{OWN_PREFIX}'))",
                f"{kind}: no {OWN_KEY} (the operator sets those itself)",
            ),
            Rule(
                f"self.all(k, size(k) <= 317 && k.matches('{QUALIFIED_NAME_PATTERN}'))",
                f"{kind}: every key is a qualified name such as kueue.x-k8s.io/queue-name",
            ),
        ),
    }


def _check_keys(kind: str, keys: dict[str, str]) -> dict[str, str]:
    for key in keys:
        if key.startswith(OWN_PREFIX) or f".{OWN_PREFIX}" in key:
            raise ValueError(f"{kind} {key!r}: no {OWN_KEY} (the operator sets those itself)")
        if not re.match(QUALIFIED_NAME_PATTERN, key) or len(key) > 317:
            raise ValueError(f"{kind} {key!r}: not a qualified name such as kueue.x-k8s.io/queue-name")
    return keys


class Device(StrEnum):
    """Where the worker runs the refit and the verification."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class PullPolicy(StrEnum):
    """When the kubelet pulls the worker image."""

    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


class KeySelector(Model):
    """A key of a Secret or ConfigMap in the TRTModel's namespace."""

    name: str = Field(
        description="Name of the Secret or ConfigMap.", pattern=DNS_SUBDOMAIN_PATTERN, max_length=253
    )
    key: str = Field(description="The key to read.", min_length=1, max_length=253)
    optional: schema.Optional[bool] = Field(
        default=None, description="Allow the object or key to be missing."
    )


class FieldSelector(Model):
    """A field of the refit pod, e.g. metadata.namespace."""

    field_path: str = Field(description="Path of the field, e.g. metadata.namespace.", min_length=1)
    api_version: schema.Optional[str] = Field(
        default=None, description="Schema version of fieldPath; v1 when unset."
    )


class EnvVarSource(Model):
    """Where an environment variable's value comes from."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            Rule(
                "[has(self.secretKeyRef), has(self.configMapKeyRef), has(self.fieldRef)]"
                ".filter(x, x).size() == 1",
                "set exactly one of secretKeyRef, configMapKeyRef and fieldRef",
            )
        )
    )

    secret_key_ref: schema.Optional[KeySelector] = Field(default=None, description="A key of a Secret.")
    config_map_key_ref: schema.Optional[KeySelector] = Field(
        default=None, description="A key of a ConfigMap."
    )
    field_ref: schema.Optional[FieldSelector] = Field(default=None, description="A field of the refit pod.")


class EnvVar(Model):
    """An environment variable of the worker container, e.g. storage credentials or endpoints."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            Rule(
                "!(has(self.value) && has(self.valueFrom))", "set value or valueFrom, not both", ".valueFrom"
            )
        )
    )

    name: str = Field(description="Name of the variable.", pattern=ENV_VAR_NAME_PATTERN, max_length=256)
    value: schema.Optional[str] = Field(default=None, description="Literal value.")
    value_from: schema.Optional[EnvVarSource] = Field(default=None, description="Value read from elsewhere.")


class ObjectRef(Model):
    """A Secret or ConfigMap in the TRTModel's namespace."""

    name: str = Field(description="Name of the object.", pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)
    optional: schema.Optional[bool] = Field(default=None, description="Allow the object to be missing.")


class EnvFromSource(Model):
    """All keys of a Secret or ConfigMap as environment variables."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            Rule(
                "has(self.secretRef) != has(self.configMapRef)",
                "set exactly one of secretRef and configMapRef",
            )
        )
    )

    prefix: schema.Optional[str] = Field(default=None, description="Prepended to every key.", max_length=256)
    secret_ref: schema.Optional[ObjectRef] = Field(default=None, description="The Secret to read.")
    config_map_ref: schema.Optional[ObjectRef] = Field(default=None, description="The ConfigMap to read.")


class TolerationOperator(StrEnum):
    """How a toleration matches a taint's value."""

    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    """Which taint effect a toleration tolerates; all effects when unset."""

    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Toleration(Model):
    """Lets the refit pod schedule onto nodes with a matching taint (e.g. dedicated GPU nodes)."""

    key: schema.Optional[str] = Field(
        default=None, description="Taint key; all keys when unset (with Exists)."
    )
    operator: schema.Optional[TolerationOperator] = Field(
        default=None, description="Exists or Equal (default)."
    )
    value: schema.Optional[str] = Field(default=None, description="Taint value to match with Equal.")
    effect: schema.Optional[TaintEffect] = Field(default=None, description="Taint effect to tolerate.")
    toleration_seconds: schema.Optional[int] = Field(
        default=None, description="For NoExecute: how long the pod stays bound after the taint appears."
    )


class ResourceRequirements(Model):
    """CPU, memory and other resources of the worker container. GPUs are set with `gpus`."""

    limits: dict[str, Quantity] = Field(
        default_factory=dict,
        description="Most of each resource the container may use, e.g. {memory: 32Gi}.",
        json_schema_extra={
            "additionalProperties": {"x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN}
        },
    )
    requests: dict[str, Quantity] = Field(
        default_factory=dict,
        description="Resources the scheduler reserves for the container, e.g. {cpu: '4', memory: 16Gi}.",
        json_schema_extra={
            "additionalProperties": {"x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN}
        },
    )


class RefitJobSpec(Model):
    """How the refit Job runs. The Job's pod runs `trtrefit refit` with arguments built from the spec and
    writes its result to the termination message."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            Rule(
                "!(self.device == 'cpu' && has(self.gpus) && self.gpus > 0)",
                "a refit on device cpu requests no GPUs: set gpus to 0 or leave it out",
                ".gpus",
            )
        )
    )

    image: schema.Optional[str] = Field(
        default=None,
        description="Worker image; the operator's default (TRTREFIT_WORKER_IMAGE) when unset.",
        min_length=1,
        max_length=1024,
    )
    image_pull_policy: schema.Optional[PullPolicy] = Field(
        default=None, description="When to pull the image."
    )
    command: schema.Optional[list[str]] = Field(
        default=None,
        description="Entrypoint that precedes `refit <flags>`; the operator's default (trtrefit) when unset.",
        min_length=1,
        max_length=16,
    )
    device: Device = Field(default=Device.AUTO, description="Device the worker refits and verifies on.")
    gpus: schema.Optional[int] = Field(
        default=None,
        description="GPUs requested for the pod; 1 when unset, 0 when device is cpu.",
        ge=0,
        le=16,
    )
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="Other resources of the worker container."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the refit pod requires, e.g. nvidia.com/gpu.product."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Taints the refit pod tolerates.", max_length=32
    )
    service_account_name: schema.Optional[str] = Field(
        default=None,
        description="ServiceAccount of the refit pod, e.g. one bound to a cloud storage role.",
        pattern=DNS_SUBDOMAIN_PATTERN,
        max_length=253,
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        description="Environment of the worker, e.g. AWS_ENDPOINT_URL or credentials from a Secret.",
        max_length=64,
        json_schema_extra=list_map("name"),
    )
    env_from: list[EnvFromSource] = Field(
        default_factory=list,
        description="Secrets and ConfigMaps loaded whole into the environment.",
        max_length=16,
    )
    backoff_limit: int = Field(
        default=2,
        description="Retries of a pod that ends in an error (not of a failed verification, which is final).",
        ge=0,
        le=10,
    )
    active_deadline_seconds: int = Field(
        default=3600, description="The refit Job fails when it runs longer than this.", ge=1
    )
    max_artifact_size: schema.Optional[str] = Field(
        default=None,
        description=(
            "Largest file the refit downloads, a quantity such as 20Gi; the operator's default "
            "(refit.maxArtifactSize) when unset. The pod's scratch volume is 4x this (engine, source, "
            "checkpoint and the refitted program), as its emptyDir sizeLimit and ephemeral-storage request."
        ),
        pattern=BYTE_SIZE_PATTERN,
        max_length=32,
    )
    ttl_seconds_after_finished: int = Field(
        default=3600,
        description="Finished refit Jobs are deleted this long after they end; the result stays in status.",
        ge=0,
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Labels of the refit Job and its pod, e.g. kueue.x-k8s.io/queue-name for a Kueue LocalQueue. "
            "Keys under trtrefit.dev/ are refused; the operator's own labels win over a user's."
        ),
        json_schema_extra=_metadata_map("labels", {"maxLength": 63, "pattern": LABEL_VALUE_PATTERN}),
    )
    annotations: dict[str, str] = Field(
        default_factory=dict,
        description="Annotations of the refit Job and its pod. Keys under trtrefit.dev/ are refused.",
        json_schema_extra=_metadata_map("annotations", {"maxLength": 4096}),
    )
    priority_class_name: schema.Optional[str] = Field(
        default=None,
        description="PriorityClass of the refit pod (also what Kueue orders workloads by).",
        pattern=DNS_SUBDOMAIN_PATTERN,
        max_length=253,
    )
    affinity: schema.Optional[Affinity] = Field(
        default=None, description="Node and pod (anti-)affinity of the refit pod, as in a pod spec."
    )
    gpu_resource: schema.Optional[str] = Field(
        default=None,
        description=(
            "Extended resource the GPUs are requested as: nvidia.com/gpu, or a MIG profile such as "
            "nvidia.com/mig-1g.10gb; the operator's default (gpuResource, nvidia.com/gpu) when unset."
        ),
        pattern=RESOURCE_NAME_PATTERN,
        max_length=317,
    )

    @field_validator("labels")
    @classmethod
    def _label_keys(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            if len(value) > 63 or not re.match(LABEL_VALUE_PATTERN, value):
                raise ValueError(f"labels {key!r}: value {value[:80]!r} is not a label value (63 characters)")
        return _check_keys("labels", labels)

    @field_validator("annotations")
    @classmethod
    def _annotation_keys(cls, annotations: dict[str, str]) -> dict[str, str]:
        return _check_keys("annotations", annotations)
