"""Prometheus metrics of the operator, in a registry of their own (no process-wide state).

Operator-wide (kept when a TRTModel goes away):
trtrefit_refits_total{outcome}                 refits that ended: Passed, VerificationFailed, Failed
trtrefit_refit_duration_seconds                refit Job start to end
trtrefit_rollouts_total{outcome}               rollouts that ended: Complete, Reverted, Failed
trtrefit_rollout_duration_seconds{outcome}     Deployment patch to rollout end
trtrefit_models{phase}                         TRTModels by status.phase

Per TRTModel (labels namespace, name; removed with the TRTModel, so the series count stays bounded by the
number of models times a few fixed label values):
trtrefit_model_phase{namespace,name,phase}                      1, one series per model: its current phase
trtrefit_model_refits_total{namespace,name,outcome}             refits of the model that ended
trtrefit_model_rollouts_total{namespace,name,outcome}           rollouts of the model that ended
trtrefit_model_last_refit_duration_seconds{namespace,name}      the duration of its last finished refit
trtrefit_model_last_success_timestamp_seconds{namespace,name}   when a refit of it last passed (this process)
trtrefit_reconcile_errors_total{namespace,name,reason}          passes that raised, by a fixed reason class
"""

from __future__ import annotations

import contextlib
import ssl
from collections import Counter as Tally
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

from kubernetes.client.rest import ApiException
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import ValidationError
from urllib3.exceptions import HTTPError as Urllib3Error

from trtrefit.api.status import Phase
from trtrefit.controller.events import Finished
from trtrefit.controller.kube import ConflictError, InvalidError, KubeError, NotFoundError

REFIT_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
ROLLOUT_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800)
MODEL_LABELS: Final = ("namespace", "name")

# The reason classes of trtrefit_reconcile_errors_total: a fixed set, whatever the exception.
INVALID_SPEC, CONFLICT, NOT_FOUND, INVALID = "InvalidSpec", "Conflict", "NotFound", "Invalid"
UNAUTHORIZED, FORBIDDEN, API_ERROR, UNREACHABLE, INTERNAL = (
    "Unauthorized",
    "Forbidden",
    "ApiError",
    "Unreachable",
    "Internal",
)
ERROR_REASONS: Final = (
    INVALID_SPEC,
    CONFLICT,
    NOT_FOUND,
    INVALID,
    UNAUTHORIZED,
    FORBIDDEN,
    API_ERROR,
    UNREACHABLE,
    INTERNAL,
)
_BY_STATUS = {401: UNAUTHORIZED, 403: FORBIDDEN, 404: NOT_FOUND, 409: CONFLICT, 422: INVALID}


# Checked in this order: the 404/409/422 subclasses before KubeError.
_BY_TYPE: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], str], ...] = (
    (ValidationError, INVALID_SPEC),  # the stored spec does not parse
    (ConflictError, CONFLICT),
    (NotFoundError, NOT_FOUND),
    (InvalidError, INVALID),
    ((Urllib3Error, OSError, ssl.SSLError), UNREACHABLE),
)


def error_reason(exc: BaseException) -> str:
    """The reason class of an exception a pass raised, following its chain of causes."""
    seen: BaseException | None = exc
    while seen is not None:
        for kind, reason in _BY_TYPE:
            if isinstance(seen, kind):
                return reason
        if isinstance(seen, KubeError | ApiException):
            return _BY_STATUS.get(int(seen.status or 0), API_ERROR)
        seen = seen.__cause__
    return INTERNAL


@dataclass
class _ModelSeries:
    phase: Phase | None = None
    stalled: str | None = None  # the Stalled condition's reason while it is True
    refits: Tally[str] = field(default_factory=Tally)
    rollouts: Tally[str] = field(default_factory=Tally)
    errors: Tally[str] = field(default_factory=Tally)
    last_refit_seconds: float | None = None
    last_success: float | None = None


class _ModelCollector(Collector):
    """Builds the per-model families at scrape time from plain dicts, so forgetting a model drops all its
    series at once (prometheus_client's labelled metrics would need one remove() per label combination)."""

    def __init__(self, models: dict[tuple[str, str], _ModelSeries]) -> None:
        self.models = models

    def collect(self) -> Iterator[Metric]:
        by_phase = GaugeMetricFamily("trtrefit_models", "TRTModels by status.phase", labels=["phase"])
        phases = Tally(series.phase for series in self.models.values() if series.phase is not None)
        for phase in Phase:
            by_phase.add_metric([phase.value], phases[phase])
        yield by_phase
        current = GaugeMetricFamily(
            "trtrefit_model_phase",
            "1 for the TRTModel's current status.phase",
            labels=[*MODEL_LABELS, "phase"],
        )
        refits = CounterMetricFamily(
            "trtrefit_model_refits",
            "Refits of the TRTModel that ended, by outcome",
            labels=[*MODEL_LABELS, "outcome"],
        )
        rollouts = CounterMetricFamily(
            "trtrefit_model_rollouts",
            "Rollouts of the TRTModel that ended, by outcome",
            labels=[*MODEL_LABELS, "outcome"],
        )
        errors = CounterMetricFamily(
            "trtrefit_reconcile_errors",
            "Reconcile passes of the TRTModel that raised, by reason class",
            labels=[*MODEL_LABELS, "reason"],
        )
        duration = GaugeMetricFamily(
            "trtrefit_model_last_refit_duration_seconds",
            "Duration of the TRTModel's last finished refit",
            labels=list(MODEL_LABELS),
        )
        success = GaugeMetricFamily(
            "trtrefit_model_last_success_timestamp_seconds",
            "Unix time of the TRTModel's last passed refit seen by this operator process",
            labels=list(MODEL_LABELS),
        )
        stalled = GaugeMetricFamily(
            "trtrefit_model_stalled",
            "1 while the TRTModel's Stalled condition is True (a human must act), with its reason; else 0",
            labels=[*MODEL_LABELS, "reason"],
        )
        for (namespace, name), series in sorted(self.models.items()):
            if series.phase is not None:
                current.add_metric([namespace, name, series.phase.value], 1)
                stalled.add_metric([namespace, name, series.stalled or ""], 1 if series.stalled else 0)
            for outcome, count in sorted(series.refits.items()):
                refits.add_metric([namespace, name, outcome], count)
            for outcome, count in sorted(series.rollouts.items()):
                rollouts.add_metric([namespace, name, outcome], count)
            for reason, count in sorted(series.errors.items()):
                errors.add_metric([namespace, name, reason], count)
            if series.last_refit_seconds is not None:
                duration.add_metric([namespace, name], series.last_refit_seconds)
            if series.last_success is not None:
                success.add_metric([namespace, name], series.last_success)
        yield from (current, stalled, refits, rollouts, errors, duration, success)


def _key(model: str) -> tuple[str, str]:
    namespace, _, name = model.rpartition("/")
    return namespace, name


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.refits = Counter(
            "trtrefit_refits", "Refits that ended, by outcome", ["outcome"], registry=self.registry
        )
        self.refit_seconds = Histogram(
            "trtrefit_refit_duration_seconds",
            "Refit Job duration",
            buckets=REFIT_BUCKETS,
            registry=self.registry,
        )
        self.rollouts = Counter(
            "trtrefit_rollouts", "Rollouts that ended, by outcome", ["outcome"], registry=self.registry
        )
        self.rollout_seconds = Histogram(
            "trtrefit_rollout_duration_seconds",
            "From patching the Deployment to the end of its rollout",
            ["outcome"],
            buckets=ROLLOUT_BUCKETS,
            registry=self.registry,
        )
        self.models: dict[tuple[str, str], _ModelSeries] = {}
        self.registry.register(_ModelCollector(self.models))

    def _series(self, model: str) -> _ModelSeries:
        return self.models.setdefault(_key(model), _ModelSeries())

    def record(
        self, finished: Sequence[Finished], model: str | None = None, now: float | None = None
    ) -> None:
        """Count refits and rollouts that ended in a pass of `model` ("namespace/name"), with durations.
        `now` (Unix time) stamps a passed refit for trtrefit_model_last_success_timestamp_seconds."""
        # Only a pass that ended something creates the series: a late pass of a deleted model does not.
        series = self._series(model) if model is not None and finished else None
        for item in finished:
            if item.what == "refit":
                self.refits.labels(item.outcome).inc()
                if item.seconds is not None:
                    self.refit_seconds.observe(item.seconds)
                if series is not None:
                    series.refits[item.outcome] += 1
                    series.last_refit_seconds = item.seconds
                    if item.outcome == "Passed" and now is not None:
                        series.last_success = now
            else:
                self.rollouts.labels(item.outcome).inc()
                if item.seconds is not None:
                    self.rollout_seconds.labels(item.outcome).observe(item.seconds)
                if series is not None:
                    series.rollouts[item.outcome] += 1

    def set_phase(self, model: str, phase: Phase | None, stalled: str | None = None) -> None:
        """The model's phase after a pass, and the Stalled condition's reason while it is True."""
        if phase is not None:
            series = self._series(model)
            series.phase, series.stalled = phase, stalled

    def reconcile_error(self, model: str, exc: BaseException) -> str:
        """Count a pass of `model` that raised; returns the reason class it was counted under."""
        reason = error_reason(exc)
        self._series(model).errors[reason] += 1
        return reason

    @contextlib.asynccontextmanager
    async def counting_errors(self, model: str) -> AsyncIterator[None]:
        """Around a pass: count what it raises (and let it propagate)."""
        try:
            yield
        except Exception as exc:
            self.reconcile_error(model, exc)
            raise

    def forget(self, model: str) -> None:
        """Drop every per-model series of a deleted TRTModel."""
        self.models.pop(_key(model), None)

    def serve(self, port: int, address: str = "0.0.0.0") -> None:  # scraped from other pods
        """Expose /metrics over HTTP in a background thread."""
        start_http_server(port, addr=address, registry=self.registry)
