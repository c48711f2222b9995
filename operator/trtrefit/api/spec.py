"""`TRTModel.spec`: what to refit (engine, source, checkpoint), how to verify it, where to publish it, how
to run the refit Job, which Deployment serves the result and how a new checkpoint reaches its pods."""

from __future__ import annotations

import math
import re
from enum import StrEnum
from typing import Annotated

from kube_custom_resource import schema
from pydantic import ConfigDict, Field, field_validator

from trtrefit.api.base import (
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    ENV_VAR_NAME_PATTERN,
    MAX_URI_LENGTH,
    SHA256_PATTERN,
    URI_PATTERN,
    USERINFO_PATTERN,
    WRITABLE_URI_PATTERN,
    Model,
    Rule,
    cel,
)
from trtrefit.api.jobspec import RefitJobSpec

# A checkpoint in one of these formats holds weights only: the verification reference needs `source`.
STATE_DICT_SUFFIX = r"[.](safetensors|pt|pth)([?#].*)?$"  # [.], not \., which a CEL string would need escaped


NO_USERINFO = "no credentials in URIs"


class Artifact(Model):
    """A file read by the refit Job, addressed by URI."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            Rule(
                f"!self.uri.matches('{USERINFO_PATTERN}')",
                f"{NO_USERINFO}: give storage credentials through spec.refitJob.envFrom or workload "
                "identity, not as user:password@ in the URI",
                ".uri",
            )
        )
    )

    uri: str = Field(
        description=(
            "Where the file is: file://, http(s)://, s3:// or gs:// (gcs://). The refit Job reads it with "
            "its own credentials (spec.refitJob.env / envFrom); user:password@ in the URI is refused, and "
            "a query string (a presigned URL) is never shown in status, Events or logs."
        ),
        pattern=URI_PATTERN,
        max_length=MAX_URI_LENGTH,
    )

    @field_validator("uri")
    @classmethod
    def _no_userinfo(cls, uri: str) -> str:
        if re.match(USERINFO_PATTERN, uri):
            raise ValueError(f"{NO_USERINFO}: give storage credentials through the environment instead")
        return uri


class PinnedArtifact(Artifact):
    """A file read by the refit Job, optionally pinned to its content digest."""

    sha256: schema.Optional[str] = Field(
        default=None,
        description=(
            "Expected SHA-256 of the file, 64 lowercase hex digits. When set, the refit fails before loading "
            "anything if the bytes differ."
        ),
        pattern=SHA256_PATTERN,
    )


class DType(StrEnum):
    """Element type of a generated verification input."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    FLOAT64 = "float64"
    INT64 = "int64"
    INT32 = "int32"
    INT16 = "int16"
    INT8 = "int8"
    UINT8 = "uint8"
    BOOL = "bool"


class GeneratedInput(Model):
    """One positional input of the program, generated from a seed: standard normal values for floating
    types, uniform integers in [low, high) for integer types."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            Rule("!has(self.low) || !has(self.high) || self.low < self.high", "low must be less than high")
        )
    )

    shape: list[Annotated[int, Field(ge=1)]] = Field(
        description="Dimensions of the tensor, batch first, e.g. [8, 3, 224, 224].",
        min_length=1,
        max_length=8,
    )
    dtype: DType = Field(default=DType.FLOAT32, description="Element type of the tensor.")
    low: schema.Optional[int] = Field(
        default=None, description="Smallest value of an integer input (inclusive); default 0."
    )
    high: schema.Optional[int] = Field(
        default=None, description="Bound of an integer input (exclusive); default 10, or 2 for bool."
    )


class VerifySpec(Model):
    """How the refitted program is checked against PyTorch before it may serve: the reference is the new
    weights run in the source program; every output must meet all three tolerances. Without inputs and
    generate, the inputs are generated from the program's own input signature (its static shapes and
    dtypes; a dynamic dimension takes its lower bound, and one without an upper bound is refused)."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            Rule(
                "!(has(self.inputs) && has(self.generate))",
                "set at most one of verify.inputs and verify.generate (neither: inputs are generated from "
                "the program's input signature)",
            ),
            Rule(
                "!has(self.seed) || !has(self.inputs)",
                "verify.seed only applies to generated inputs (verify.generate or the program's signature)",
                ".seed",
                "FieldValueForbidden",
            ),
        )
    )

    inputs: schema.Optional[PinnedArtifact] = Field(
        default=None,
        description=(
            "A safetensors file of sample inputs named input_0, input_1, ... in call order. Exclusive with "
            "generate; without either, inputs are generated from the program's input signature."
        ),
    )
    generate: schema.Optional[list[GeneratedInput]] = Field(
        default=None,
        description="Generate the sample inputs from shapes and dtypes instead of reading them. Exclusive "
        "with inputs.",
        min_length=1,
        max_length=16,
    )
    seed: schema.Optional[int] = Field(
        default=None,
        description="Seed for generated inputs (generate or the signature's); 0 when unset.",
        ge=0,
    )
    rtol: float = Field(
        default=0.01, description="Largest allowed relative error of any output element.", ge=0
    )
    atol: float = Field(
        default=0.01, description="Largest allowed absolute error of any output element.", ge=0
    )
    min_cosine_similarity: float = Field(
        default=0.999,
        description="Smallest allowed cosine similarity between each output and its reference, in [-1, 1].",
        ge=-1,
        le=1,
    )


class PublishSpec(Model):
    """Where refitted programs are written."""

    uri: str = Field(
        description=(
            "URI prefix (file://, s3://, gs://) under which each refitted program lands content-addressed as "
            "<sha256>.ep, with a small manifest beside it."
        ),
        pattern=WRITABLE_URI_PATTERN,
        max_length=MAX_URI_LENGTH,
    )


class ServingSpec(Model):
    """The Deployment that serves the engine. Restart: after a verified refit the operator patches its pod
    template (the engine env var and the trtrefit.dev/engine-sha256 annotation) and Kubernetes rolls it.
    InPlace: the operator refits its ready pods where they run and never edits the template."""

    deployment_name: str = Field(
        description="Name of the Deployment in the TRTModel's namespace.",
        pattern=DNS_SUBDOMAIN_PATTERN,
        max_length=253,
    )
    container_name: schema.Optional[str] = Field(
        default=None,
        description="Container that loads the engine; may be left out when the pod has a single container.",
        pattern=DNS_LABEL_PATTERN,
        max_length=63,
    )
    engine_env_var: str = Field(
        default="TRT_ENGINE_URI",
        description=(
            "Restart: environment variable through which the container receives the engine URI (unused by "
            "InPlace)."
        ),
        pattern=ENV_VAR_NAME_PATTERN,
        max_length=256,
    )


class RolloutStrategy(StrEnum):
    """How a verified checkpoint reaches the serving pods."""

    RESTART = "Restart"
    IN_PLACE = "InPlace"


# An integer of pods, or a percentage of the Deployment's replicas (rounded up; at least one pod).
MAX_CONCURRENT_PATTERN = r"^([1-9][0-9]*|([1-9][0-9]?|100)%)$"
DEFAULT_PORT = 8080  # trtrefit serve's default; api/serving.py names the same number for the server


class RolloutSpec(Model):
    """How a new checkpoint reaches the serving pods. Restart: a refit Job publishes a refitted program and
    the Deployment's pod template is patched, which restarts every pod. InPlace: the pods run
    `trtrefit serve --model-name <TRTModel name>`; the operator sends the refit request to one ready pod (the
    canary), then to the others in batches; each pod refits its live engine and verifies it, and the pod
    template is never edited."""

    strategy: RolloutStrategy = Field(
        default=RolloutStrategy.RESTART,
        description=(
            "Restart (a refit Job, then a rolling restart of the Deployment) or InPlace (the serving pods "
            "run `trtrefit serve` and are refitted live, without restarts)."
        ),
    )
    max_concurrent: schema.IntOrString = Field(
        default="25%",
        description=(
            "InPlace: how many ready pods are refitted at a time after the canary passed: a number, or a "
            "percentage of the Deployment's replicas rounded up; at least one pod."
        ),
        # On the field, not the object: the object's default {} is checked before its fields get theirs.
        json_schema_extra=cel(
            Rule(
                f"type(self) == int ? self >= 1 : self.matches('{MAX_CONCURRENT_PATTERN}')",
                "maxConcurrent is a number of pods (at least 1) or a percentage such as 25%",
            )
        ),
    )
    port: int = Field(
        default=DEFAULT_PORT,
        description="InPlace: the port `trtrefit serve` listens on in each serving pod (the pod IP's).",
        ge=1,
        le=65535,
    )
    timeout_seconds: int = Field(
        default=120,
        description="InPlace: how long one pod's refit request may take before the operator gives up on it.",
        ge=1,
        le=3600,
    )

    @field_validator("max_concurrent")
    @classmethod
    def _count_or_percent(cls, value: str) -> str:
        if not re.match(MAX_CONCURRENT_PATTERN, value):
            raise ValueError("maxConcurrent is a number of pods (at least 1) or a percentage such as 25%")
        return value

    def batch_size(self, replicas: int) -> int:
        """Pods refitted at a time for a Deployment of `replicas`: at least one."""
        text = self.max_concurrent
        if text.endswith("%"):
            return max(1, math.ceil(replicas * int(text[:-1]) / 100))
        return max(1, int(text))


class TRTModelSpec(Model):
    """The desired state: the engine refitted with this checkpoint, verified, published and served."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            Rule(
                f"has(self.source) || !self.checkpoint.uri.matches('{STATE_DICT_SUFFIX}')",
                "source is required when the checkpoint is a bare state_dict (.safetensors, .pt, .pth): "
                "verification runs the new weights in the source program",
                ".source",
                "FieldValueRequired",
            ),
            Rule(
                "has(self.publish) || (has(self.rollout) && self.rollout.strategy == 'InPlace')",
                "publish is required for the Restart strategy: the refit Job publishes the refitted program "
                "there",
                ".publish",
                "FieldValueRequired",
            ),
        )
    )

    engine: PinnedArtifact = Field(
        description=(
            "The refittable compiled program (Torch-TensorRT .ep saved with immutable_weights=False, or a "
            "plain torch.export program for the CPU backend)."
        )
    )
    source: schema.Optional[PinnedArtifact] = Field(
        default=None,
        description=(
            "The torch.export program (.pt2) the engine was compiled from. Required when the checkpoint is a "
            "bare state_dict; the reference outputs come from it."
        ),
    )
    checkpoint: PinnedArtifact = Field(
        description=(
            "The weights to refit into the engine: a safetensors or torch state_dict, or an ExportedProgram "
            "(.pt2/.ep). Changing it starts a refit."
        )
    )
    verify: VerifySpec = Field(
        default_factory=VerifySpec,
        description=(
            "How the refitted program is verified before it may serve. Optional: by default the inputs are "
            "generated from the program's input signature (seed 0) and rtol = atol = 0.01, "
            "minCosineSimilarity = 0.999."
        ),
        json_schema_extra={"default": {}},
    )
    publish: schema.Optional[PublishSpec] = Field(
        default=None,
        description=(
            "Where the refit Job publishes the refitted program. Required for the Restart strategy; InPlace "
            "pods refit in memory and publish nothing."
        ),
    )
    refit_job: RefitJobSpec = Field(
        default_factory=RefitJobSpec,
        description="How the refit Job runs: image, resources, placement, credentials.",
        # Lets the API server fill in the Job defaults, so `kubectl get -o yaml` shows them.
        json_schema_extra={"default": {}},
    )
    serving: ServingSpec = Field(description="The Deployment that serves the refitted engine.")
    rollout: RolloutSpec = Field(
        default_factory=RolloutSpec,
        description="How a verified checkpoint reaches the serving pods: Restart (default) or InPlace.",
        json_schema_extra={"default": {}},
    )
    paused: bool = Field(
        default=False,
        description=(
            "Stop new work: no refit Job is started or superseded and the Deployment is not patched. Status "
            "keeps being reported."
        ),
    )
