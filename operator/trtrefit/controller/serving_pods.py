"""Pure readers for the InPlace strategy: the serving Deployment's pods as the API returns them, what each pod
reports about itself (ServingState) or answered to a refit request (RefitResult), the ConfigMap that tells
starting pods which refit to perform, and the token Secret. Nothing here does I/O."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from trtrefit.api.request import RefitRequest
from trtrefit.api.result import Outcome, RefitResult
from trtrefit.api.serving import DESIRED_KEY, TOKEN_KEY, ServingState
from trtrefit.controller.views import one_line

Obj = Mapping[str, Any]


@dataclass(frozen=True)
class PodView:
    """One pod of the serving Deployment, reduced to what the rollout needs."""

    name: str
    uid: str
    ip: str | None
    ready: bool

    @classmethod
    def of(cls, pod: Obj) -> PodView:
        meta, status = pod["metadata"], pod.get("status") or {}
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        return cls(
            name=meta["name"],
            uid=meta.get("uid", ""),
            ip=status.get("podIP") or None,
            ready=conditions.get("Ready") == "True",
        )


def live_pods(pods: Sequence[Obj]) -> list[PodView]:
    """Pods that are neither terminating nor finished, by name (so every pass picks the same canary)."""
    alive = [
        pod
        for pod in pods
        if not pod["metadata"].get("deletionTimestamp")
        and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    ]
    return sorted((PodView.of(pod) for pod in alive), key=lambda view: view.name)


def label_selector(deployment: Obj) -> str | None:
    """The Deployment's spec.selector as a label selector string; None when it selects nothing we can name
    (an empty selector would list every pod of the namespace)."""
    selector = deployment.get("spec", {}).get("selector") or {}
    terms = [f"{key}={value}" for key, value in sorted((selector.get("matchLabels") or {}).items())]
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        terms.append(
            {
                "In": f"{key} in ({','.join(values)})",
                "NotIn": f"{key} notin ({','.join(values)})",
                "Exists": key,
                "DoesNotExist": f"!{key}",
            }[operator]
        )
    return ",".join(terms) or None


def replicas_of(deployment: Obj) -> int:
    return int(deployment.get("spec", {}).get("replicas", 1))


@dataclass(frozen=True)
class PodState:
    """What one pod reported on GET .../trtrefit: a validated ServingState, or why there is none."""

    pod: PodView
    state: ServingState | None
    problem: str = ""

    def serves(self, key: str) -> bool:
        return self.state is not None and self.state.serves(key)

    def failed(self, key: str, attempt: str | None = None) -> RefitResult | None:
        """The pod's rolled-back refit to `key` in this `attempt`, when that is its last refit and it does
        not serve `key`."""
        if self.state is None or self.state.serves(key):
            return None
        return self.state.failed(key, attempt)

    def refitting(self, key: str) -> bool:
        return self.state is not None and self.state.refitting == key


def parse_state(pod: PodView, model: str, *, status: int | None, body: bytes, problem: str = "") -> PodState:
    """A pod's answer to GET .../trtrefit, validated; anything else is kept as the reason it is unknown."""
    if status is None:
        return PodState(pod, None, problem or "no answer")
    if status != 200:
        return PodState(pod, None, f"HTTP {status}: {one_line(body.decode(errors='replace'), 200)}")
    try:
        state = ServingState.model_validate_json(body)
    except ValidationError as exc:
        return PodState(pod, None, f"not a ServingState: {one_line(str(exc), 200)}")
    if state.model != model:
        return PodState(pod, None, f"it serves model {state.model!r}, not {model!r} (--model-name)")
    return PodState(pod, state)


class Answer(StrEnum):
    """How a pod answered a refit request."""

    PASSED = "Passed"
    FAILED = "Failed"  # verification_failed or error: the pod rolled back and keeps serving what it did
    SUPERSEDED = "Superseded"  # a newer request replaced it: not a failure
    UNAUTHORIZED = "Unauthorized"  # 401: the pod holds another token than the Secret's
    UNKNOWN = "Unknown"  # no answer, 503, or an answer that is not a RefitResult for this request


@dataclass(frozen=True)
class RefitAnswer:
    """One pod's answer to POST .../refit, validated."""

    pod: str
    answer: Answer
    result: RefitResult | None
    seconds: float
    problem: str = ""


_BY_OUTCOME = {
    Outcome.PASSED: Answer.PASSED,
    Outcome.VERIFICATION_FAILED: Answer.FAILED,
    Outcome.ERROR: Answer.FAILED,
    Outcome.SUPERSEDED: Answer.SUPERSEDED,
}


def parse_answer(
    pod: str, key: str, *, status: int | None, body: bytes, seconds: float, problem: str = ""
) -> RefitAnswer:
    """A pod's answer to a refit request of `key`. Only a RefitResult echoing the key counts as a result."""
    if status is None:
        return RefitAnswer(pod, Answer.UNKNOWN, None, seconds, problem or "no answer")
    if status == 401:
        return RefitAnswer(pod, Answer.UNAUTHORIZED, None, seconds, "the pod refused the refit token (401)")
    try:
        result = RefitResult.model_validate_json(body)
    except ValidationError:
        text = one_line(body.decode(errors="replace"), 200)
        return RefitAnswer(pod, Answer.UNKNOWN, None, seconds, f"HTTP {status}, not a RefitResult: {text}")
    if result.key != key:
        return RefitAnswer(pod, Answer.UNKNOWN, None, seconds, f"answered for refit {result.key}, not {key}")
    return RefitAnswer(pod, _BY_OUTCOME[result.outcome], result, seconds)


@dataclass(frozen=True)
class DesiredConfig:
    """The ConfigMap of an InPlace rollout as read: whose it is and the request it holds."""

    name: str
    resource_version: str
    owned: bool
    request: RefitRequest | None
    problem: str = ""  # why request is None


def desired_config(config_map: Obj, model_uid: str) -> DesiredConfig:
    meta = config_map["metadata"]
    owned = any(ref.get("uid") == model_uid for ref in meta.get("ownerReferences") or [])
    text = (config_map.get("data") or {}).get(DESIRED_KEY)
    request, problem = None, ""
    if text is None:
        problem = f"it has no key {DESIRED_KEY}"
    else:
        try:
            request = RefitRequest.model_validate_json(text)
        except ValidationError as exc:
            problem = f"{DESIRED_KEY} is not a RefitRequest: {one_line(str(exc), 200)}"
    return DesiredConfig(meta["name"], meta.get("resourceVersion", ""), owned, request, problem)


def token_of(secret: Obj) -> str | None:
    """The refit token in the Secret's data, or None when the key is missing, empty, not base64 or holds
    whitespace (which no HTTP header can carry)."""
    encoded = (secret.get("data") or {}).get(TOKEN_KEY)
    if not encoded:
        return None
    try:
        token = base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return token if token and not any(c.isspace() for c in token) else None
