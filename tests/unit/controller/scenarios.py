"""A TRTModel and the world around it, put together like one reconcile pass does, without an API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tests.unit.api.samples import body
from trtrefit.api.status import TRTModelStatus
from trtrefit.api.trtmodel import TRTModel
from trtrefit.controller.assess import Assessment, Observed
from trtrefit.controller.desired import DesiredRefit, desired_refit
from trtrefit.controller.plan import Action, decide
from trtrefit.controller.records import RefitEvidence, desired_job
from trtrefit.controller.status import compute_status
from trtrefit.controller.views import DeploymentView, JobState, JobView, pod_progress, pod_report

NOW = datetime(2026, 1, 2, 4, 0, 0, tzinfo=UTC)


@dataclass(frozen=True)
class World:
    model: TRTModel
    desired: DesiredRefit
    observed: Observed
    generation: int = 1

    @property
    def key(self) -> str:
        return self.desired.key

    def assessment(self) -> Assessment:
        return decide(self.model, self.observed, NOW).assessment

    def actions(self) -> list[Action]:
        return decide(self.model, self.observed, NOW).actions

    def status(self, now: datetime = NOW) -> TRTModelStatus:
        return compute_status(
            self.model.spec,
            generation=self.generation,
            previous=self.model.status,
            desired=self.desired,
            assessment=self.assessment(),
            observed=self.observed,
            now=now,
        )


def key_of(spec: dict[str, Any] | None = None) -> str:
    return desired_refit(TRTModel.model_validate(body(spec)).spec).key


def world(
    spec: dict[str, Any] | None = None,
    *,
    jobs: list[dict[str, Any]] | None = None,
    pods: list[dict[str, Any]] | None = None,
    deployment: dict[str, Any] | None = None,
    status: TRTModelStatus | dict[str, Any] | None = None,
    has_worker_image: bool = True,
    generation: int = 1,
    refit_job_digest: str = "",
    retry_token: str | None = None,
) -> World:
    raw_status = status.wire() if isinstance(status, TRTModelStatus) else status
    model = TRTModel.model_validate(body(spec, status=raw_status, generation=generation))
    desired = desired_refit(model.spec)
    views = tuple(JobView.of(j) for j in jobs or [])
    job = desired_job(views, desired.key)
    refit = RefitEvidence(job=job)
    if job is not None:
        if job.state is JobState.RUNNING:
            refit = RefitEvidence(job=job, progress=pod_progress(pods or [], job.uid))
        else:
            refit = RefitEvidence(job=job, report=pod_report(pods or [], job.uid))
    view = DeploymentView.of(deployment, model.spec.serving) if deployment is not None else None
    observed = Observed(
        views,
        refit,
        view,
        has_worker_image=has_worker_image,
        refit_job_digest=refit_job_digest,
        retry_token=retry_token,
    )
    return World(model, desired, observed, generation)
