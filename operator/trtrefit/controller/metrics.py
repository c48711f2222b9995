"""Prometheus metrics of the operator, in a registry of their own (no process-wide state):

trtrefit_refits_total{outcome}                 refits that ended: Passed, VerificationFailed, Failed
trtrefit_refit_duration_seconds                refit Job start to end
trtrefit_rollouts_total{outcome}               rollouts that ended: Complete, Reverted, Failed
trtrefit_rollout_duration_seconds{outcome}     Deployment patch to rollout end
trtrefit_models{phase}                         TRTModels by status.phase
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from trtrefit.api.status import Phase
from trtrefit.controller.events import Finished

REFIT_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
ROLLOUT_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800)


class _PhaseCollector(Collector):
    def __init__(self, phases: dict[str, Phase]) -> None:
        self.phases = phases

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("trtrefit_models", "TRTModels by status.phase", labels=["phase"])
        for phase in Phase:
            family.add_metric([phase.value], sum(1 for seen in self.phases.values() if seen is phase))
        yield family


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
        self.phases: dict[str, Phase] = {}
        self.registry.register(_PhaseCollector(self.phases))

    def record(self, finished: Sequence[Finished]) -> None:
        """Count refits and rollouts that ended in a pass, with their durations."""
        for item in finished:
            if item.what == "refit":
                self.refits.labels(item.outcome).inc()
                if item.seconds is not None:
                    self.refit_seconds.observe(item.seconds)
            else:
                self.rollouts.labels(item.outcome).inc()
                if item.seconds is not None:
                    self.rollout_seconds.labels(item.outcome).observe(item.seconds)

    def set_phase(self, model: str, phase: Phase | None) -> None:
        if phase is not None:
            self.phases[model] = phase

    def forget(self, model: str) -> None:
        self.phases.pop(model, None)

    def serve(self, port: int, address: str = "0.0.0.0") -> None:  # scraped from other pods
        """Expose /metrics over HTTP in a background thread."""
        start_http_server(port, addr=address, registry=self.registry)
