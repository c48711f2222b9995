"""Run a ServingModel behind uvicorn: start-up in the background (live at once, ready once verified), and
Kubernetes-friendly termination.

On SIGTERM the server reports not ready at once (/v2/health/ready 503) but keeps answering for
`drain_seconds`, the time the endpoints controller needs to stop routing here; then uvicorn stops
accepting, finishes the requests in flight (up to `grace_seconds`) and the process exits 0. A second
signal ends the drain early (uvicorn's own handling: a second SIGINT stops at once).
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import uvicorn

from trtrefit.api.redact import redact_uri
from trtrefit.api.request import RefitRequest
from trtrefit.serving.app import build_app
from trtrefit.serving.service import ServingModel, StartupError


@dataclass(frozen=True)
class ServeOptions:
    model_name: str
    request: RefitRequest
    host: str
    port: int
    token: str | None
    workdir: Path
    drain_seconds: float = 5.0
    grace_seconds: float = 30.0
    refit_sms: int | None = None


_log = logging.getLogger("trtrefit.serving")


def say(message: str) -> None:
    _log.info(message, extra={"stage": "serve"})  # text or JSON: trtrefit.logs, set up by the command


class _Server(uvicorn.Server):
    """uvicorn's server with a drain period between the first signal and the stop."""

    def __init__(self, config: uvicorn.Config, service: ServingModel, drain_seconds: float) -> None:
        super().__init__(config)
        self._service = service
        self._drain_seconds = drain_seconds
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining:  # a second signal: uvicorn's handling (stop now; it re-raises it when done)
            super().handle_exit(sig, frame)
            return
        self._draining = True
        self._service.begin_shutdown()
        say(f"{signal.Signals(sig).name}: not ready; draining for {self._drain_seconds:g} s, then stopping")
        timer = threading.Timer(self._drain_seconds, self.stop)
        timer.daemon = True
        timer.start()

    def stop(self) -> None:
        """Stop accepting, finish what is in flight, return from run()."""
        self.should_exit = True


def run(options: ServeOptions) -> int:
    """Serve until stopped; 0 after a clean stop, 1 when start-up failed."""
    service = ServingModel(options.model_name, options.workdir, refit_sms=options.refit_sms)
    config = uvicorn.Config(
        build_app(service, options.token),
        host=options.host,
        port=options.port,
        access_log=False,
        log_level="info",
        log_config=None,  # uvicorn's records go to our handler, in our format (trtrefit.logs)
        lifespan="off",
        timeout_graceful_shutdown=int(options.grace_seconds),
    )
    server = _Server(config, service, options.drain_seconds)
    failed = threading.Event()

    def boot() -> None:
        request = options.request
        say(f"loading {redact_uri(request.engine.uri)}, refitting to {redact_uri(request.checkpoint.uri)}")
        try:
            result = service.start(request)
        except StartupError as exc:
            say(f"start-up failed: {exc}")
            failed.set()
            server.stop()
            return
        except Exception:  # a bug: say so, and exit non-zero rather than serve nothing forever
            _log.exception("start-up failed: internal error", extra={"stage": "serve"})
            failed.set()
            server.stop()
            return
        say(f"ready: model {options.model_name} serves the verified checkpoint ({result.message})")

    threading.Thread(target=boot, name="startup", daemon=True).start()
    server.run()
    return 1 if failed.is_set() else 0
