"""Ride out API server outages the way a kubelet does: retry, back off, say so once, carry on.

A real kubelet keeps running when the API server (or etcd behind it) goes away: its calls fail, it retries
with a capped back-off, and whatever happened meanwhile (a container that exited) is reported once the API
answers again. The local stand-ins (hack/fakekubelet.py, hack/servingpods.py) do the same through this
module: `transient` says which failures are worth retrying, `Outage` logs one line when the API goes down
and one when it is back, and `retry` repeats one call with a capped exponential back-off.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import urllib3
from kubernetes.client.rest import ApiException

__all__ = ["REQUEST_TIMEOUT", "Backoff", "Outage", "StoppedError", "retry", "transient"]

T = TypeVar("T")
log = logging.getLogger("fakekubelet")

# Every call gets a timeout: with etcd gone the API server can hold a write for a minute before it answers
# 5xx, and a stand-in blocked that long cannot notice its own stop.
REQUEST_TIMEOUT = (3.0, 10.0)  # (connect, read) seconds
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})


class StoppedError(Exception):
    """The caller asked to stop while the API was still unreachable."""


def transient(exc: BaseException) -> bool:
    """A failure the next attempt may not see: no connection (refused, reset, timed out), or the API server
    answering 429 or 5xx (overloaded, starting, its etcd away). Anything else is the caller's to handle."""
    if isinstance(exc, ApiException):
        # status 0: the client wraps a failed connection in an ApiException without a status.
        return exc.status in RETRIED_STATUSES or not exc.status
    return isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


def _brief(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:200]


@dataclass
class Outage:
    """Whether the API answers, shared by every thread of one stand-in; logs once per change."""

    name: str = "fakekubelet"
    clock: Callable[[], float] = time.monotonic
    down_since: float | None = None
    outages: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            if self.down_since is not None:
                return
            self.down_since, self.outages = self.clock(), self.outages + 1
        log.warning("%s: API server unreachable (%s); retrying with back-off", self.name, _brief(exc))

    def answered(self) -> None:
        with self._lock:
            if self.down_since is None:
                return
            seconds, self.down_since = self.clock() - self.down_since, None
        log.warning("%s: API server back after %.1f s; resuming", self.name, seconds)

    @property
    def down(self) -> bool:
        return self.down_since is not None


@dataclass
class Backoff:
    """Delays of first_s, doubling, at most cap_s; reset() after a success."""

    first_s: float = 0.2
    cap_s: float = 3.0
    _next: float = 0.0

    def delay(self) -> float:
        self._next = self.first_s if self._next == 0.0 else min(self._next * 2, self.cap_s)
        return self._next

    def reset(self) -> None:
        self._next = 0.0


def retry(
    call: Callable[[], T],
    outage: Outage,
    stop: threading.Event,
    backoff: Backoff | None = None,
) -> T:
    """`call()` until it returns or fails with a non-transient error (raised); StoppedError when `stop` is set
    while the API is still away. Use it for idempotent calls only (reads, status patches)."""
    backoff = backoff or Backoff()
    while True:
        try:
            result = call()
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            if not transient(exc):
                outage.answered()  # an answer, if an unwelcome one: the API is there
                raise
            outage.failed(exc)
            if stop.wait(backoff.delay()):
                raise StoppedError(f"stopped while the API server was unreachable ({_brief(exc)})") from exc
            continue
        outage.answered()
        return result
