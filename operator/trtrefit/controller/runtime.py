"""What the handlers share, carried in kopf's memo (never in module globals): the API access, the HTTP client
of InPlace serving pods, the operator settings, the metrics, a lock per TRTModel (so passes for one model
never overlap) and the clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime

from trtrefit.controller.config import OperatorConfig
from trtrefit.controller.kube import Cluster
from trtrefit.controller.metrics import Metrics
from trtrefit.controller.pods import PodClient

MAX_BACKOFF_SECONDS = 300.0


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
    backoffs: dict[tuple[str, str], int] = field(default_factory=dict)  # consecutive backed-off passes
    wakeups: dict[tuple[str, str], asyncio.TimerHandle] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def lock(self, namespace: str, name: str) -> asyncio.Lock:
        return self.locks.setdefault((namespace, name), asyncio.Lock())

    def next_delay(self, namespace: str, name: str, delay: float | None, *, backoff: bool) -> float | None:
        """When to look at a model again: `delay`, doubled for each consecutive pass that backed off (API
        errors), at most MAX_BACKOFF_SECONDS; the count restarts once a pass needs no backoff."""
        key = (namespace, name)
        if delay is None or not backoff:
            self.backoffs.pop(key, None)
            return delay
        attempts = self.backoffs.get(key, 0)
        self.backoffs[key] = attempts + 1
        return min(MAX_BACKOFF_SECONDS, delay * float(2 ** min(attempts, 10)))

    def wake_later(
        self, namespace: str, name: str, delay: float, run: Callable[[], Coroutine[None, None, None]]
    ) -> None:
        """Run `run` after `delay` seconds, replacing a wake-up already set for this model: a retry that no
        watch event would trigger (a backoff, a transient failure's retryAt)."""
        key = (namespace, name)
        if (earlier := self.wakeups.pop(key, None)) is not None:
            earlier.cancel()

        def start() -> None:
            self.wakeups.pop(key, None)
            task = asyncio.ensure_future(run())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

        self.wakeups[key] = asyncio.get_running_loop().call_later(delay, start)

    def forget(self, namespace: str, name: str) -> None:
        self.locks.pop((namespace, name), None)
        self.backoffs.pop((namespace, name), None)
        if (wakeup := self.wakeups.pop((namespace, name), None)) is not None:
            wakeup.cancel()
        self.metrics.forget(f"{namespace}/{name}")
