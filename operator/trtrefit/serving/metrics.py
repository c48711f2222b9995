"""Prometheus metrics of one serving process, in a registry of its own (so two servers in one test process
do not collide): inference requests and their latency, refits by outcome, the seconds of each refit stage,
how long a refit held the lock inference takes, and the checkpoint now served."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from trtrefit.api.redact import redact_uri

# Inference on a warm engine is milliseconds; a CPU program or a big batch can take a second.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Refit stages range from 0.1 ms (the swap under the lock) to seconds (a download, the first refit).
_STAGE_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServingMetrics:
    def __init__(self, model: str) -> None:
        self.registry = CollectorRegistry()
        self._model = model
        self.requests = Counter(
            "trtrefit_serve_requests",
            "Inference requests answered, by outcome (ok, client_error, not_ready).",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "trtrefit_serve_request_seconds",
            "Inference request latency in seconds (decode, wait for the lock, run, encode).",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.refits = Counter(
            "trtrefit_serve_refits",
            "Refits by outcome (passed, verification_failed, error, superseded).",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "trtrefit_serve_refit_stage_seconds",
            "Seconds per refit stage (fetch, check, stage, reference, digest, wait, lock, apply, verify, "
            "total).",
            ["model", "stage"],
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.lock_seconds = Histogram(
            "trtrefit_serve_refit_lock_seconds",
            "Seconds a refit held the lock inference takes (the swap to the verified standby copy).",
            ["model"],
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.ready = Gauge(
            "trtrefit_serve_ready", "1 when the server reports ready.", ["model"], registry=self.registry
        )
        self.checkpoint = Info(
            "trtrefit_serve_checkpoint",
            "The checkpoint every inference now computes with (URI without credentials).",
            ["model"],
            registry=self.registry,
        )

    def request(self, outcome: str, seconds: float) -> None:
        self.requests.labels(self._model, outcome).inc()
        self.latency.labels(self._model).observe(seconds)

    def refit(self, outcome: str, timings: Mapping[str, float]) -> None:
        self.refits.labels(self._model, outcome).inc()
        for stage, seconds in timings.items():
            self.stage_seconds.labels(self._model, stage).observe(seconds)
        if "lock" in timings:
            self.lock_seconds.labels(self._model).observe(timings["lock"])

    def served(self, uri: str, sha256: str, key: str | None) -> None:
        self.checkpoint.labels(self._model).info({"uri": redact_uri(uri), "sha256": sha256, "key": key or ""})

    def set_ready(self, ready: bool) -> None:
        self.ready.labels(self._model).set(1 if ready else 0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
