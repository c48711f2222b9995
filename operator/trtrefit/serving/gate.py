"""One refit at a time, and at most one waiting: a newer request supersedes the one queued before it.

The running refit is never interrupted (it may already hold the lock inference takes); only a request
that has not started yet is dropped, and its caller gets a `superseded` answer naming the newer one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(eq=False)
class Ticket:
    """One caller's place; `superseded_by` is set (to the newer request's label) when it is dropped."""

    label: str
    superseded_by: str | None = None


class SupersededError(Exception):
    def __init__(self, newer: str) -> None:
        super().__init__(newer)
        self.newer = newer


class RefitGate:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running: Ticket | None = None
        self._queued: Ticket | None = None

    @property
    def running(self) -> str | None:
        """Label of the refit now running, if any."""
        with self._cond:
            return self._running.label if self._running else None

    @contextmanager
    def turn(self, label: str) -> Iterator[None]:
        """Wait for this request's turn; SupersededError when a newer request replaced it in the queue."""
        ticket = Ticket(label)
        with self._cond:
            # Whatever waits is older than this request: drop it, even when nothing runs right now (it may
            # be about to wake up), so an older checkpoint never lands after a newer one.
            if self._queued is not None:
                self._queued.superseded_by = label
                self._queued = None
                self._cond.notify_all()
            if self._running is not None:
                self._queued = ticket
                self._cond.wait_for(lambda: ticket.superseded_by is not None or self._running is None)
                if ticket.superseded_by is not None:
                    raise SupersededError(ticket.superseded_by)
                self._queued = None
            self._running = ticket
        try:
            yield
        finally:
            with self._cond:
                self._running = None
                self._cond.notify_all()
