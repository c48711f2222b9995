"""Stage-by-stage progress ("[fetch] ...") and the seconds each stage took; download progress every few
seconds. Lines go through `logging` (trtrefit.logs picks text or JSON); URIs lose their credentials."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from fsspec.callbacks import Callback

from trtrefit.api.redact import redact_text, redact_uri
from trtrefit.logs import ensure_configured

_log = logging.getLogger("trtrefit.worker")
_downloads = logging.getLogger("trtrefit.worker.download")
REPORT_SECONDS_ENV = "TRTREFIT_PROGRESS_SECONDS"
DEFAULT_REPORT_SECONDS = 5.0


class Progress:
    """Logs one line per event, tagged with its stage, and adds up wall time per stage."""

    def __init__(self) -> None:
        ensure_configured()
        self._started = time.perf_counter()
        self.timings: dict[str, float] = {}
        self.hidden: tuple[str, ...] = ()  # URIs whose credentials never reach the log

    def hide(self, uris: Iterable[str]) -> None:
        self.hidden = (*self.hidden, *uris)

    def say(self, stage: str, message: str) -> None:
        level = logging.ERROR if stage == "error" else logging.INFO
        _log.log(level, redact_text(message, self.hidden), extra={"stage": stage})

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


def report_seconds() -> float:
    """How often a download says how far it got: $TRTREFIT_PROGRESS_SECONDS, else 5 s."""
    try:
        value = float(os.environ.get(REPORT_SECONDS_ENV, DEFAULT_REPORT_SECONDS))
    except ValueError:
        return DEFAULT_REPORT_SECONDS
    return value if value > 0 else DEFAULT_REPORT_SECONDS


class DownloadMeter(Callback):  # type: ignore[misc]  # fsspec is untyped
    """An fsspec callback that logs bytes so far, the total when known and the recent rate, at most once
    per `every` seconds, and a last line when the download took long enough to report at all."""

    def __init__(
        self,
        uri: str,
        size: int | None = None,
        *,
        every: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(size=size)
        self.uri = redact_uri(uri)
        self.every = every if every is not None else report_seconds()
        self._clock = clock
        self._started = self._last_time = clock()
        self._last_value = 0
        self.reports = 0

    def call(self, *_args: Any, **_kwargs: Any) -> None:
        now = self._clock()
        if now - self._last_time >= self.every:
            self._report(now, done=False)

    def close(self) -> None:
        if self.reports:
            self._report(self._clock(), done=True)

    def __exit__(self, *exc_info: object) -> None:
        if exc_info[0] is None:  # a failed download says so elsewhere; "downloaded" would mislead
            self.close()

    def _report(self, now: float, *, done: bool) -> None:
        window = now - (self._started if done else self._last_time)
        moved = self.value - (0 if done else self._last_value)
        rate = moved / window if window > 0 else 0.0
        total = f" of {_size(self.size)} ({100 * self.value / self.size:.0f}%)" if self.size else ""
        verb = "downloaded" if done else "downloading"
        message = f"{self.uri}: {verb} {_size(self.value)}{total}, {_size(rate)}/s"
        extra = {
            "stage": "fetch",
            "uri": self.uri,
            "bytes": self.value,
            "total": self.size,
            "bytes_per_second": round(rate),
            "seconds": round(now - self._started, 3),
        }
        _downloads.info(message + (f" in {now - self._started:.1f} s" if done else ""), extra=extra)
        self._last_time, self._last_value = now, self.value
        self.reports += 1


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")
