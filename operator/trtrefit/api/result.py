"""The refit worker's result: one JSON object the worker prints as its last stdout line and writes to
`/dev/termination-log`; the operator reads it back from the pod's termination message.

Kept small (the kubelet truncates termination messages at 4 KiB) and versioned by `apiVersion`.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

RESULT_API_VERSION = "trtrefit.dev/result-v1"
MAX_RESULT_BYTES = 4096


class Outcome(StrEnum):
    """How a refit ended. Exit codes: passed 0, error 1, verification_failed 2. `superseded`: a serving
    pod dropped a queued request because a newer one arrived (never a Job's outcome)."""

    PASSED = "passed"
    VERIFICATION_FAILED = "verification_failed"
    ERROR = "error"
    SUPERSEDED = "superseded"


class RefitPath(StrEnum):
    """Which refit code ran: plain parameter swap (exported), TensorRT Refitter fast path, or
    torch_tensorrt.dynamo.refit_module_weights as the fallback."""

    EXPORTED = "exported"
    FAST = "fast"
    FALLBACK = "fallback"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class OutputCheck(_Strict):
    """Verification numbers for one output tensor of the program."""

    name: str
    max_abs_error: float = Field(alias="maxAbsError")
    max_rel_error: float = Field(alias="maxRelError")
    cosine_similarity: float = Field(alias="cosineSimilarity")
    passed: bool


class Verification(_Strict):
    """Worst case over all outputs, plus whether every output met the tolerances."""

    passed: bool
    max_abs_error: float = Field(alias="maxAbsError")
    max_rel_error: float = Field(alias="maxRelError")
    min_cosine_similarity: float = Field(alias="minCosineSimilarity")
    outputs: list[OutputCheck] = Field(default_factory=list)


SHA256_HEX = r"^[0-9a-f]{64}$"


class PublishedEngine(_Strict):
    """Where the refitted program was published, content-addressed by its sha256."""

    uri: str
    sha256: str = Field(pattern=SHA256_HEX)


class CheckpointDigest(_Strict):
    """The checkpoint a refit used, with the sha256 of the bytes actually read."""

    uri: str
    sha256: str = Field(pattern=SHA256_HEX)


class RefitResult(_Strict):
    """The worker's one result object. `message` is a single human-readable line."""

    api_version: str = Field(default=RESULT_API_VERSION, alias="apiVersion")
    outcome: Outcome
    message: str = ""
    # An error worth another Job (storage unreachable after the worker's own retries); unset: not known,
    # and the operator then waits for a change to spec.refitJob or the retry annotation.
    transient: bool | None = None
    key: str | None = None  # the request's key, echoed
    attempt: str | None = None  # the request's attempt (the retry annotation it was sent under), echoed
    checkpoint: CheckpointDigest | None = None
    backend: str | None = None
    path: RefitPath | None = None
    engine: PublishedEngine | None = None
    verification: Verification | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)

    def to_json(self) -> str:
        """Compact JSON by alias; drops per-output detail, then shortens the message, to fit 4 KiB."""
        text = self.model_dump_json(by_alias=True, exclude_none=True)
        if len(text.encode()) <= MAX_RESULT_BYTES:
            return text
        slim = self.model_copy(deep=True)
        if slim.verification is not None:
            slim.verification.outputs = [o for o in slim.verification.outputs if not o.passed][:4]
        text = slim.model_dump_json(by_alias=True, exclude_none=True)
        overflow = len(text.encode()) - MAX_RESULT_BYTES
        if overflow > 0:
            slim.message = slim.message[: max(0, len(slim.message) - overflow - 3)] + "..."
            text = slim.model_dump_json(by_alias=True, exclude_none=True)
        return text

    @classmethod
    def from_json(cls, text: str) -> RefitResult:
        """Parse a termination message; raises pydantic.ValidationError when it is not a result."""
        return cls.model_validate_json(text)


def exit_code(outcome: Outcome) -> int:
    """The worker's process exit code for an outcome."""
    return {Outcome.PASSED: 0, Outcome.ERROR: 1, Outcome.VERIFICATION_FAILED: 2, Outcome.SUPERSEDED: 1}[
        outcome
    ]
