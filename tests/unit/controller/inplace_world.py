"""An InPlace TRTModel and its serving pods as real model instances (ServingState, RefitResult, the ConfigMap
as the API returns it), for the planner, status and events tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tests.unit.api.samples import model
from trtrefit.api.request import RefitRequest, refit_request
from trtrefit.api.result import CheckpointDigest, Outcome, RefitPath, RefitResult, Verification
from trtrefit.api.serving import ServedCheckpoint, ServingState
from trtrefit.api.trtmodel import TRTModel
from trtrefit.controller.desired import DesiredRefit, desired_refit
from trtrefit.controller.inplace_objects import build_desired_config_map
from trtrefit.controller.inplace_plan import InPlaceObserved
from trtrefit.controller.serving_pods import DesiredConfig, PodState, PodView, RefitAnswer, desired_config

NOW = datetime(2026, 1, 2, 4, 0, 0, tzinfo=UTC)
ENGINE_SHA = "e" * 64
CKPT_SHA = "c" * 64
IN_PLACE = {"publish": None, "rollout": {"strategy": "InPlace", "maxConcurrent": 1}}
OLD = "0" * 32  # the key pods served before the bump


def in_place_model(spec: dict[str, Any] | None = None, **kwargs: Any) -> TRTModel:
    return model({**IN_PLACE, **(spec or {})}, **kwargs)


def desired_of(m: TRTModel) -> tuple[DesiredRefit, RefitRequest]:
    desired = desired_refit(m.spec)
    return desired, refit_request(m.spec, key=desired.key)


def result(key: str, outcome: Outcome = Outcome.PASSED, *, max_abs: float = 1e-4) -> RefitResult:
    passed = outcome is Outcome.PASSED
    return RefitResult(
        outcome=outcome,
        message="refitted 12 tensors" if passed else "output 0 misses atol",
        key=key,
        checkpoint=CheckpointDigest(uri="s3://ckpt/resnet50/step-1200.safetensors", sha256=CKPT_SHA),
        backend="exported",
        path=RefitPath.EXPORTED,
        verification=Verification(
            passed=passed,
            max_abs_error=max_abs if passed else 0.5,
            max_rel_error=2e-4 if passed else 0.9,
            min_cosine_similarity=0.99999 if passed else 0.7,
        ),
    )


def state(
    key: str | None,
    *,
    ready: bool = True,
    refitting: str | None = None,
    last: RefitResult | None = None,
    name: str = "resnet50",
    uri: str = "s3://ckpt/resnet50/step-1200.safetensors",
) -> ServingState:
    checkpoint = ServedCheckpoint(uri=uri, sha256=CKPT_SHA, key=key, since=NOW) if key else None
    return ServingState(
        model=name,
        backend="exported",
        engine=CheckpointDigest(uri="s3://models/resnet50/engine.ep", sha256=ENGINE_SHA),
        ready=ready,
        checkpoint=checkpoint,
        refitting=refitting,
        last_refit=last,
    )


def pod(name: str, serving: ServingState | None = None, *, ready: bool = True, problem: str = "") -> PodState:
    view = PodView(name=name, uid=f"uid-{name}", ip=f"10.0.0.{len(name)}", ready=ready)
    return PodState(view, serving, problem if serving is None else "")


def config(m: TRTModel, request: RefitRequest, *, owned: bool = True) -> DesiredConfig:
    manifest = build_desired_config_map(m, request)
    manifest["metadata"]["resourceVersion"] = "5"
    if not owned:
        manifest["metadata"]["ownerReferences"] = []
    return desired_config(manifest, m.metadata.uid or "")


def world(
    m: TRTModel,
    pods: list[PodState],
    *,
    config_request: RefitRequest | None = None,
    answers: tuple[RefitAnswer, ...] = (),
    replicas: int | None = None,
    deployment: str | None = "resnet50-server",
) -> InPlaceObserved:
    """The observation of one pass; the ConfigMap holds `config_request` (default: an older refit)."""
    _, request = desired_of(m)
    held = config_request or request.model_copy(update={"key": OLD})
    return InPlaceObserved(
        deployment=deployment,
        replicas=len(pods) if replicas is None else replicas,
        token="t0ken",
        config=config(m, held),
        pods=tuple(pods),
        answers=answers,
    )
