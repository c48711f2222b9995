"""One logging setup for every `trtrefit` process (operator, worker, server): `--log-format text`, lines as
people read them, or `json`, one object per line for log pipelines (Loki, Elasticsearch, Cloud Logging).

A JSON line carries `time` (RFC 3339, UTC), `level`, `logger`, `message` and every structured extra the
caller attached (`stage`, `uri`, `bytes`, `total`, ...); kopf's object reference comes as `object`, the
key kopf's own JSON format uses. Text lines look like the worker's stage lines always did:
`[fetch] message`, or the bare message when a record names no stage.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

FORMATS = ("text", "json")
FORMAT_ENV = "TRTREFIT_LOG_FORMAT"  # so a Job's or a pod's env can choose without touching its args
# Extras that are plumbing, not information: kopf's event-posting flags and settings, uvicorn's
# ANSI-coloured copy of the message.
_DROPPED = frozenset({"k8s_skip", "k8s_ref", "settings", "color_message", "taskName"})


def default_format(environ: Mapping[str, str] | None = None) -> str:
    """The format when no flag says otherwise: $TRTREFIT_LOG_FORMAT if valid, else text."""
    value = (environ if environ is not None else os.environ).get(FORMAT_ENV, "").strip().lower()
    return value if value in FORMATS else "text"


def add_log_format_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        default=default_format(),
        help=f"text: one readable line per event; json: one JSON object per line (time, level, logger, "
        f"message, extras such as uri and bytes). Default: ${FORMAT_ENV}, else text",
    )


class JsonLineFormatter(JsonFormatter):
    """python-json-logger with our key names, kopf's object reference and nothing that is plumbing."""

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            reserved_attrs=[*RESERVED_ATTRS, *_DROPPED],
            timestamp="time",
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        reference = getattr(record, "k8s_ref", None)
        if reference is not None:
            log_data["object"] = reference
        log_data["time"] = log_data["time"].isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        ordered: dict[str, Any] = {}  # the four fixed keys first: raw lines read alike
        for key in ("time", "level", "logger", "message"):
            if key in log_data:
                ordered[key] = log_data.pop(key)
        ordered.update(log_data)
        return ordered


class TextLineFormatter(logging.Formatter):
    """`[stage] message` when the record names a stage (the worker's and the server's lines), the message
    itself otherwise (as the commands always printed them); tracebacks follow."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        stage = getattr(record, "stage", None)
        line = f"[{stage}] {message}" if stage else message
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time (pytest's capture swaps it; so does a redirect)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass  # StreamHandler.__init__ assigns one; ours is always the current stderr


def formatter(log_format: str) -> logging.Formatter:
    if log_format not in FORMATS:
        raise ValueError(f"--log-format {log_format!r}: expected one of {', '.join(FORMATS)}")
    return JsonLineFormatter() if log_format == "json" else TextLineFormatter()


def configure(log_format: str, level: int = logging.INFO, *, warnings: bool = True) -> None:
    """Send every log record of this process to stderr in `log_format`; Python warnings too (unless
    `warnings` is False), so that a JSON stream holds nothing but JSON. Calling it again replaces the
    previous setup."""
    handler = _StderrHandler()
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, _StderrHandler)]
    root.addHandler(handler)
    root.setLevel(level)
    if warnings:
        logging.captureWarnings(True)


def ensure_configured() -> None:
    """Text logging for callers that never chose a format (benchmarks, library use), so that stage lines
    still reach stderr as they did before logging carried them."""
    if not any(isinstance(h, _StderrHandler) for h in logging.getLogger().handlers):
        configure("text", warnings=False)  # a library leaves the warnings machinery alone


def restyle(log_format: str) -> None:
    """Put our formatter on every handler of the root logger that another library set up (kopf's), so the
    operator's lines have the same shape as the worker's and the server's."""
    for handler in logging.getLogger().handlers:
        if type(handler).__module__.startswith("kopf") or isinstance(handler, _StderrHandler):
            handler.setFormatter(formatter(log_format))
    logging.captureWarnings(True)
