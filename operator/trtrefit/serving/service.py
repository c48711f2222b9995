"""`ServingModel`: a live program in two copies, the lock inference and refits share, and what this
process serves.

The HTTP layer and the GPU benchmark both drive it. A refit fetches, checks, stages and computes the
reference (serving/prepare.py), applies the weights to the standby copy, runs the verification inputs
through it and compares, all while requests keep flowing on the serving copy (serving/standby.py). Only
a verified standby is promoted, under the lock inference takes, so no request ever computes with weights
that are not verified and none waits for more than the swap.
"""

from __future__ import annotations

import datetime
import logging
import platform
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from trtrefit import __version__
from trtrefit.api.redact import redact_text, redact_uri
from trtrefit.api.request import RefitRequest
from trtrefit.api.result import CheckpointDigest, Outcome, RefitPath, RefitResult
from trtrefit.api.serving import ServedCheckpoint, ServingState
from trtrefit.serving import streams
from trtrefit.serving.backends import open_live
from trtrefit.serving.exported import ExportedLive
from trtrefit.serving.gate import RefitGate, SupersededError
from trtrefit.serving.metrics import ServingMetrics
from trtrefit.serving.prepare import FETCH_RETRY, Prepared, PrepareError, prepare, stage_for_standby
from trtrefit.serving.standby import StandbyPair
from trtrefit.worker import programs
from trtrefit.worker.backends import detect
from trtrefit.worker.errors import WorkerError
from trtrefit.worker.formats import check_compatible
from trtrefit.worker.progress import Progress
from trtrefit.worker.refit import resolve_device
from trtrefit.worker.storage import DEFAULT_MAX_BYTES, fetch
from trtrefit.worker.verify import Tolerances, verify

if TYPE_CHECKING:
    import torch

_log = logging.getLogger("trtrefit.serving")
# What a failing live program raises while it runs (torch and TensorRT errors), as the worker catches them.
_RUN_ERRORS = (RuntimeError, AssertionError, ValueError, TypeError)
# A refit that fails is never promoted: it changed only the standby copy.
_UNTOUCHED = "not promoted, the previous weights keep serving"


class StartupError(Exception):
    """Start-up could not serve a verified checkpoint: one line, and the process exits non-zero."""


class NotReadyError(Exception):
    """No verified weights to serve yet."""


class InputError(ValueError):
    """Inference inputs that do not fit the model (count, dtype, rank) or that the program refuses."""


@dataclass(frozen=True)
class TensorMeta:
    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class _Loaded:
    """The program this process loaded at start; refits may change its weights, never the program."""

    engine: CheckpointDigest
    source: CheckpointDigest | None
    kind: str
    live: StandbyPair
    reference: ExportedLive | None  # the source program, kept on the device; refits rebind its weights


class ServingModel:
    def __init__(
        self, name: str, workdir: Path, metrics: ServingMetrics | None = None, refit_sms: int | None = None
    ) -> None:
        self.name = name
        self._workdir = workdir
        self._refit_sms = refit_sms  # SMs for a refit's PyTorch work (serving/partition.py); None: all
        self.metrics = metrics or ServingMetrics(name)
        self._lock = threading.Lock()  # the one lock inference and the promotion of a verified refit share
        self._gate = RefitGate()
        self._loaded: _Loaded | None = None
        self._served: ServedCheckpoint | None = None
        self._last: RefitResult | None = None
        self._stopping = False
        self._started = False  # both copies verified: start() returned
        self.inputs: list[TensorMeta] = []
        self.outputs: list[TensorMeta] = []
        self._versions = {"trtrefit": __version__, "python": platform.python_version()}

    # ---- start-up -----------------------------------------------------------------------------------
    def start(self, request: RefitRequest) -> RefitResult:
        """Load the engine (and source) the request names, refit both copies to the request's checkpoint
        and verify each; raises StartupError with one line when anything fails. Ready only after this
        returns. The first refit of each copy primes its Refitters (the slow one); the result returned is
        the first copy's.

        It holds the refit gate throughout, so a refit request arriving meanwhile waits for it (and is then
        applied after the start-up checkpoint, being the newer of the two)."""
        with self._gate.turn(_label(request)):
            try:
                self._loaded = self._load(request)
            except WorkerError as exc:
                raise StartupError(redact_text(exc.message, _uris(request))) from exc
            result = self._refit(request, Progress(), both_copies=True)
        self._record(result)
        self._started = result.outcome == Outcome.PASSED
        self.metrics.set_ready(self.ready)
        if result.outcome != Outcome.PASSED:
            raise StartupError(f"the first refit did not pass ({result.outcome.value}): {result.message}")
        return result

    def _load(self, request: RefitRequest) -> _Loaded:
        import torch

        folder = Path(tempfile.mkdtemp(prefix="start-", dir=self._workdir))
        limit = request.max_artifact_bytes or DEFAULT_MAX_BYTES
        engine = fetch(request.engine.uri, folder, request.engine.sha256, FETCH_RETRY, max_bytes=limit)
        source = (
            fetch(request.source.uri, folder, request.source.sha256, FETCH_RETRY, max_bytes=limit)
            if request.source
            else None
        )
        kind = detect(engine.path, request.engine.uri)
        device = resolve_device(request.device.value, kind)
        if self._refit_sms is not None:
            if not device.startswith("cuda"):
                raise WorkerError(f"--refit-sms {self._refit_sms}: the program runs on {device}, not a GPU")
            partition = streams.use_partition(device, self._refit_sms)
            assert partition is not None
            _log.info(
                f"a refit's PyTorch work runs on {partition.refit_sms} of {partition.total_sms} SMs",
                extra={"stage": "serve"},
            )
        source_program = reference = None
        if source is not None:
            label = f"source {request.source.uri if request.source else ''}"
            source_program = programs.load_program(source.path, label)
            # A second copy of the source program as the verification reference, on the device and unlifted
            # once: a refit only rebinds its weights (no per-refit copy or re-unlifting of the program).
            reference = ExportedLive(source.path, label, None, device)
        live = StandbyPair(lambda: open_live(kind, engine.path, request.engine.uri, source_program, device))
        if source_program is not None:
            check_compatible(
                live.expected_weights(), programs.weights_of(source_program), "source (against the engine)"
            )
        self._versions["torch"] = torch.__version__
        return _Loaded(
            engine=CheckpointDigest(uri=engine.uri, sha256=engine.sha256),
            source=CheckpointDigest(uri=source.uri, sha256=source.sha256) if source else None,
            kind=kind,
            live=live,
            reference=reference,
        )

    # ---- refit --------------------------------------------------------------------------------------
    def refit(self, request: RefitRequest) -> RefitResult:
        """One refit, blocking; thread-safe. Never raises for bad input: the result says what happened."""
        progress = Progress()
        try:
            with self._gate.turn(_label(request)):
                result = self._refit(request, progress)
        except SupersededError as exc:
            result = self._result(
                request, Outcome.SUPERSEDED, f"superseded by a newer refit request ({exc.newer})", progress
            )
        self._record(result)
        return result

    def _record(self, result: RefitResult) -> None:
        if result.outcome != Outcome.SUPERSEDED:  # a dropped request changed nothing: not the last refit
            self._last = result
        self.metrics.refit(result.outcome.value, result.timings)

    def _refit(self, request: RefitRequest, progress: Progress, *, both_copies: bool = False) -> RefitResult:
        """Prepare, apply to the standby, verify, promote. With `both_copies` (start-up), the other copy
        too, from the same fetched and checked weights; the first copy's result unless the second fails."""
        loaded = self._loaded
        if loaded is None:
            return self._result(request, Outcome.ERROR, "the server has loaded no engine yet", progress)
        refused = _different_program(request, loaded)
        if refused:
            return self._result(request, Outcome.ERROR, refused, progress)
        try:
            with tempfile.TemporaryDirectory(prefix="refit-", dir=self._workdir) as folder:
                prepared = prepare(request, loaded.live, loaded.reference, Path(folder), progress)
        except PrepareError as exc:
            return self._result(request, Outcome.ERROR, exc.message, progress, checkpoint=exc.checkpoint)
        except WorkerError as exc:
            return self._result(request, Outcome.ERROR, exc.message, progress)
        result = self._apply_and_verify(request, loaded, prepared, progress)
        if not both_copies or result.outcome != Outcome.PASSED:
            return result
        again = self._refit_the_other_copy(request, loaded, prepared)
        return result if again.outcome == Outcome.PASSED else again

    def _refit_the_other_copy(
        self, request: RefitRequest, loaded: _Loaded, prepared: Prepared
    ) -> RefitResult:
        """The copy that served until the promotion just made, now the standby, to the same weights."""
        progress = Progress()
        try:
            with progress.stage("stage"):
                staged = stage_for_standby(loaded.live, prepared.weights)
        except WorkerError as exc:
            return self._result(request, Outcome.ERROR, exc.message, progress, checkpoint=prepared.checkpoint)
        return self._apply_and_verify(request, loaded, replace(prepared, staged=staged), progress)

    def _apply_and_verify(
        self, request: RefitRequest, loaded: _Loaded, prepared: Prepared, progress: Progress
    ) -> RefitResult:
        live = loaded.live
        tolerances = Tolerances(
            rtol=request.verify.rtol,
            atol=request.verify.atol,
            min_cosine_similarity=request.verify.min_cosine_similarity,
        )
        try:
            with progress.stage("apply"):
                live.load(prepared.staged)
        except _RUN_ERRORS as exc:
            return self._result(
                request,
                Outcome.ERROR,
                f"setting the weights failed: {_first_line(exc)}; {_UNTOUCHED}",
                progress,
                checkpoint=prepared.checkpoint,
            )
        try:
            with progress.stage("verify"):
                report = verify(live.verify_run(prepared.inputs), prepared.expected, tolerances)
        except _RUN_ERRORS as exc:
            return self._result(
                request,
                Outcome.ERROR,
                f"the refitted program does not run on the verification inputs: {_first_line(exc)}; "
                f"{_UNTOUCHED}",
                progress,
                checkpoint=prepared.checkpoint,
            )
        if not report.verification.passed:
            return self._result(
                request,
                Outcome.VERIFICATION_FAILED,
                f"{report.message}{prepared.note}; {_UNTOUCHED}",
                progress,
                checkpoint=prepared.checkpoint,
                verification=report.verification,
            )
        with self._held(progress):
            live.promote()
            self._served = ServedCheckpoint(
                uri=redact_uri(request.checkpoint.uri),
                sha256=prepared.checkpoint.sha256,
                key=request.key,
                since=datetime.datetime.now(datetime.UTC),
            )
        if not self.inputs:
            self.inputs = [
                TensorMeta(f"input_{i}", _dtype(t), tuple(t.shape)) for i, t in enumerate(prepared.inputs)
            ]
            self.outputs = [
                TensorMeta(f"output_{i}", _dtype(t), tuple(t.shape)) for i, t in enumerate(prepared.expected)
            ]
        self.metrics.served(request.checkpoint.uri, prepared.checkpoint.sha256, request.key)
        self.metrics.set_ready(self.ready)
        return self._result(
            request,
            Outcome.PASSED,
            report.message + prepared.note,
            progress,
            checkpoint=prepared.checkpoint,
            verification=report.verification,
        )

    @contextmanager
    def _held(self, progress: Progress) -> Iterator[None]:
        """The lock, with the wait for it and the time it was held recorded as `wait` and `lock`."""
        with progress.stage("wait"):
            self._lock.acquire()
        try:
            with progress.stage("lock"):
                yield
        finally:
            self._lock.release()

    def _result(
        self,
        request: RefitRequest,
        outcome: Outcome,
        message: str,
        progress: Progress,
        **extra: object,
    ) -> RefitResult:
        checkpoint = extra.pop("checkpoint", None)
        if isinstance(checkpoint, CheckpointDigest):
            extra["checkpoint"] = CheckpointDigest(uri=redact_uri(checkpoint.uri), sha256=checkpoint.sha256)
        loaded = self._loaded
        return RefitResult.model_validate(
            {
                "outcome": outcome,
                "message": redact_text(message, _uris(request)),
                "key": request.key,
                "attempt": request.attempt,
                "backend": loaded.kind if loaded else None,
                "path": _path(loaded.kind) if loaded else None,
                "timings": {**progress.timings, "total": progress.total()},
                "versions": dict(self._versions),
                **extra,
            }
        )

    # ---- inference ----------------------------------------------------------------------------------
    def infer(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Outputs for positional inputs, computed wholly with one verified checkpoint, on the host."""
        loaded = self._loaded
        if loaded is None or self._served is None:
            raise NotReadyError(f"model {self.name} serves no verified checkpoint yet")
        self._check_inputs(inputs)
        with self._lock:
            try:
                outputs = loaded.live.infer(inputs)
            except _RUN_ERRORS as exc:
                raise InputError(f"the program refused the inputs: {_first_line(exc)}") from exc
        return [streams.to_host(t) for t in outputs]  # outside the lock: a refit need not wait for it

    def _check_inputs(self, inputs: Sequence[torch.Tensor]) -> None:
        if len(inputs) != len(self.inputs):
            raise InputError(f"model {self.name} takes {len(self.inputs)} input(s), got {len(inputs)}")
        for meta, tensor in zip(self.inputs, inputs, strict=True):
            if _dtype(tensor) != meta.dtype:
                raise InputError(f"input {meta.name}: dtype {_dtype(tensor)}, the model takes {meta.dtype}")
            if tensor.dim() != len(meta.shape) or tuple(tensor.shape[1:]) != meta.shape[1:]:
                raise InputError(
                    f"input {meta.name}: shape {list(tensor.shape)} does not fit the model's "
                    f"{list(meta.shape)}"
                )

    # ---- state --------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._started and self._served is not None and not self._stopping

    @property
    def stopping(self) -> bool:
        return self._stopping

    def begin_shutdown(self) -> None:
        """Not ready from now on (the endpoints controller stops routing here); inference keeps working
        for the requests still arriving while the server drains."""
        self._stopping = True
        self.metrics.set_ready(False)

    def state(self) -> ServingState:
        loaded = self._loaded
        engine = None
        if loaded is not None:
            engine = CheckpointDigest(uri=redact_uri(loaded.engine.uri), sha256=loaded.engine.sha256)
        return ServingState(
            model=self.name,
            backend=loaded.kind if loaded else "",
            engine=engine,
            ready=self.ready,
            checkpoint=self._served,
            refitting=self._gate.running,
            last_refit=self._last,
        )


def _different_program(request: RefitRequest, loaded: _Loaded) -> str | None:
    """Why this process cannot take the request (it names another engine or source), or None."""
    wanted: list[tuple[str, str | None, str | None, CheckpointDigest | None]] = [
        ("engine", request.engine.uri, request.engine.sha256, loaded.engine)
    ]
    if request.source is not None or loaded.source is not None:
        source = request.source
        wanted.append(
            ("source", source.uri if source else None, source.sha256 if source else None, loaded.source)
        )
    for role, uri, sha256, have in wanted:
        if have is None or uri != have.uri or (sha256 is not None and sha256 != have.sha256):
            return (
                f"the request's {role} ({redact_uri(uri) if uri else 'none'}) is not the {role} this server "
                f"loaded ({redact_uri(have.uri) if have else 'none'}): a new {role} needs new pods"
            )
    return None


def _label(request: RefitRequest) -> str:
    """How a refit is named in the state's `refitting` and in a superseded answer."""
    return request.key or redact_uri(request.checkpoint.uri)


def _uris(request: RefitRequest) -> list[str]:
    found = [request.engine.uri, request.checkpoint.uri]
    found += [a.uri for a in (request.source, request.verify.inputs) if a is not None]
    return found


def _path(kind: str) -> RefitPath:
    return RefitPath.FAST if kind == "tensorrt" else RefitPath.EXPORTED


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
