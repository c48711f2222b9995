"""Stage-by-stage progress on stderr ("[fetch] ...") and the seconds each stage took."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TextIO

from trtrefit.api.redact import redact_text


class Progress:
    """Prints one line per event, prefixed by the stage, and adds up wall time per stage."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._started = time.perf_counter()
        self.timings: dict[str, float] = {}
        self.hidden: tuple[str, ...] = ()  # URIs whose credentials never reach the log

    def hide(self, uris: Iterable[str]) -> None:
        self.hidden = (*self.hidden, *uris)

    def say(self, stage: str, message: str) -> None:
        print(f"[{stage}] {redact_text(message, self.hidden)}", file=self._stream, flush=True)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a block under `name`; times of repeated blocks with the same name add up."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.timings[name] = round(self.timings.get(name, 0.0) + seconds, 4)

    def total(self) -> float:
        return round(time.perf_counter() - self._started, 4)
