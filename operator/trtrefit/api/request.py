"""The refit request: one typed description of a refit, shared by every front-end that starts one.

The operator builds it from a TRTModel spec (`refit_request`); the refit Job receives it as
`trtrefit refit --request JSON`; `trtrefit serve` takes it on its refit endpoint (POST, bearer token) and,
at start, from the ConfigMap the operator keeps for InPlace rollouts. A human may still use the
`trtrefit refit` flags, which build the same model.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from trtrefit.api.jobspec import Device
from trtrefit.api.spec import PinnedArtifact, PublishSpec, TRTModelSpec, VerifySpec

REQUEST_API_VERSION: Literal["trtrefit.dev/refit-request-v1"] = "trtrefit.dev/refit-request-v1"


class RefitPolicy(StrEnum):
    """TensorRT engines: the fast path with the stock refit as fallback (auto), the fast path or fail, or
    the stock `refit_module_weights` only."""

    AUTO = "auto"
    FAST = "fast"
    FALLBACK = "fallback"


class RefitRequest(BaseModel):
    """What to refit, how to verify it and where the result goes. Unknown fields are refused: a request
    is a contract between the operator and pods that may run another version."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, alias_generator=to_camel)

    api_version: Literal["trtrefit.dev/refit-request-v1"] = Field(default=REQUEST_API_VERSION)
    key: str | None = Field(
        default=None,
        description="The operator's digest of this refit; echoed in results and in a server's state.",
        pattern=r"^[a-f0-9]{8,64}$",
    )
    attempt: str | None = Field(
        default=None,
        description="The TRTModel's trtrefit.dev/retry annotation when the request was made; echoed in "
        "results, so a failure of an earlier attempt is not taken for this one.",
        max_length=253,
    )
    engine: PinnedArtifact
    source: PinnedArtifact | None = None
    checkpoint: PinnedArtifact
    verify: VerifySpec = Field(default_factory=VerifySpec)
    publish: PublishSpec | None = Field(
        default=None,
        description="Where a refit Job publishes; a serving pod refits in memory and ignores it.",
    )
    device: Device = Device.AUTO
    max_artifact_bytes: int | None = Field(
        default=None, ge=1, description="Largest file the refit downloads; the worker's default when unset."
    )
    refit_path: RefitPolicy = RefitPolicy.AUTO

    @model_validator(mode="after")
    def _one_kind_of_inputs(self) -> RefitRequest:
        # Neither: the worker generates the inputs from the program's own input signature.
        if self.verify.inputs is not None and self.verify.generate is not None:
            raise ValueError("set at most one of verify.inputs and verify.generate")
        if self.verify.seed is not None and self.verify.inputs is not None:
            raise ValueError("verify.seed only applies to generated inputs, not to verify.inputs")
        return self

    def wire(self) -> str:
        """Compact JSON, camelCase, unset fields left out."""
        return self.model_dump_json(by_alias=True, exclude_none=True)


def refit_request(
    spec: TRTModelSpec,
    key: str | None = None,
    max_artifact_bytes: int | None = None,
    attempt: str | None = None,
) -> RefitRequest:
    """The refit a TRTModel spec asks for."""
    return RefitRequest(
        max_artifact_bytes=max_artifact_bytes,
        key=key,
        attempt=attempt,
        engine=spec.engine,
        source=spec.source,
        checkpoint=spec.checkpoint,
        verify=spec.verify,
        publish=spec.publish,
        device=spec.refit_job.device,
    )
