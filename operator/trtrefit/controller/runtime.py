"""What the handlers share, carried in kopf's memo (never in module globals): the API access, the HTTP client
of InPlace serving pods, the operator settings, the metrics, a lock per TRTModel (so passes for one model
never overlap) and the clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from trtrefit.controller.config import OperatorConfig
from trtrefit.controller.kube import Cluster
from trtrefit.controller.metrics import Metrics
from trtrefit.controller.pods import PodClient


def utc_now() -> datetime:
    """Whole seconds, as Kubernetes timestamps have."""
    return datetime.now(UTC).replace(microsecond=0)


@dataclass
class Runtime:
    cluster: Cluster
    config: OperatorConfig
    metrics: Metrics = field(default_factory=Metrics)
    pods: PodClient = field(default_factory=PodClient)  # HTTP to InPlace serving pods
    clock: Callable[[], datetime] = utc_now
    locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)

    def lock(self, namespace: str, name: str) -> asyncio.Lock:
        return self.locks.setdefault((namespace, name), asyncio.Lock())

    def forget(self, namespace: str, name: str) -> None:
        self.locks.pop((namespace, name), None)
        self.metrics.forget(f"{namespace}/{name}")
