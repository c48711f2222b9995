"""What `trtrefit serve` tells the operator, beside the Open Inference Protocol v2 it speaks to clients.

Two documented extensions under the model's OIP path:

- `GET  /v2/models/{model}/trtrefit` -> `ServingState`: what this process serves now (no auth: it changes
  nothing and holds no secret).
- `POST /v2/models/{model}/refit` with `Authorization: Bearer <token>` and a `RefitRequest` body ->
  a `RefitResult`. HTTP status: 200 passed; 422 verification_failed or error (bad input; the old weights
  keep serving); 409 superseded (a newer request arrived while this one waited); 400 a body that is not a
  RefitRequest; 401 a missing or wrong token; 503 the server is shutting down. Errors without a
  RefitResult body use the protocol's `{"error": "..."}`.

The operator trusts no answer: it validates each as these models before acting on it.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from trtrefit.api.result import CheckpointDigest, RefitResult

SERVING_STATE_API_VERSION = "trtrefit.dev/serving-state-v1"
STATE_PATH = "/v2/models/{model}/trtrefit"
REFIT_PATH = "/v2/models/{model}/refit"
DEFAULT_PORT = 8080
# The Secret and the ConfigMap of an InPlace rollout, named after the TRTModel; the serving container reads
# both through its environment (secretKeyRef / configMapKeyRef), so neither is in the pod template's values.
TOKEN_ENV = "TRTREFIT_REFIT_TOKEN"
DESIRED_ENV = "TRTREFIT_DESIRED_REFIT"  # a RefitRequest as JSON: what a starting pod refits to before Ready
TOKEN_KEY = "token"
DESIRED_KEY = "refit-request.json"


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, alias_generator=to_camel)


class ServedCheckpoint(_Wire):
    """The checkpoint whose weights every inference of this process now computes with."""

    uri: str
    sha256: str
    key: str | None = Field(default=None, description="The RefitRequest.key that put it there.")
    since: datetime


class ServingState(_Wire):
    """One serving process, as it reports itself."""

    api_version: str = Field(default=SERVING_STATE_API_VERSION)
    model: str
    backend: str  # tensorrt | exported
    engine: CheckpointDigest | None = None  # the program loaded at start (uri, sha256); None until loaded
    ready: bool
    checkpoint: ServedCheckpoint | None = None  # None only before the first verified refit
    refitting: str | None = Field(default=None, description="Key of the refit in progress, if any.")
    last_refit: RefitResult | None = None

    def serves(self, key: str) -> bool:
        """Whether this process serves the refit `key`, verified."""
        return self.ready and self.checkpoint is not None and self.checkpoint.key == key

    def failed(self, key: str, attempt: str | None = None) -> RefitResult | None:
        """The result of a refit to `key` (sent as `attempt`) that this process rolled back, if that is its
        last refit."""
        last = self.last_refit
        if last is None or last.key != key or last.attempt != attempt or last.outcome not in _ROLLED_BACK:
            return None
        return last


_ROLLED_BACK = ("verification_failed", "error")
