"""The refit pipeline: fetch -> check -> refit -> verify -> publish, timed per stage, ending in one
RefitResult. Every failure before publishing leaves the publish prefix untouched."""

from __future__ import annotations

import datetime
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtrefit import __version__
from trtrefit.api.jobspec import Device
from trtrefit.api.redact import redact_text, redact_uri
from trtrefit.api.request import RefitRequest
from trtrefit.api.result import CheckpointDigest, Outcome, RefitPath, RefitResult
from trtrefit.worker import programs
from trtrefit.worker.backends import Backend, BackendKind, RefitWork, detect, open_backend
from trtrefit.worker.errors import WorkerError
from trtrefit.worker.formats import Checkpoint, check_compatible, load_checkpoint
from trtrefit.worker.inputs import (
    VerificationInputs,
    program_signature,
    tolerance_phrase,
    verification_inputs,
)
from trtrefit.worker.progress import Progress
from trtrefit.worker.storage import DEFAULT_MAX_BYTES, Fetched, Wanted, fetch_all, publish
from trtrefit.worker.verify import Report, Tolerances, verify

if TYPE_CHECKING:
    import torch
    from torch.export import ExportedProgram

    from trtrefit.api.spec import PinnedArtifact


@dataclass
class _Trace:
    """What is known so far, so that a failure still reports backend, path, timings and versions."""

    key: str | None = None
    backend: BackendKind | None = None
    path: RefitPath | None = None
    versions: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, Fetched] = field(default_factory=dict)


def run_refit(request: RefitRequest, workdir: Path, progress: Progress) -> RefitResult:
    """Run the whole pipeline; bad input and failed steps become an `error` result, not an exception."""
    trace = _Trace(key=request.key, versions={"trtrefit": __version__, "python": platform.python_version()})
    progress.hide(a.uri for a in artifacts(request).values())
    try:
        return _pipeline(request, workdir, progress, trace)
    except WorkerError as exc:
        progress.say("error", exc.message)
        return _result(Outcome.ERROR, exc.message, trace, progress, transient=exc.transient or None)


def _result(outcome: Outcome, message: str, trace: _Trace, progress: Progress, **extra: Any) -> RefitResult:
    timings = {**progress.timings, "total": progress.total()}
    fetched = trace.artifacts.get("checkpoint")
    return RefitResult(
        outcome=outcome,
        message=redact_text(message, progress.hidden),
        key=trace.key,
        checkpoint=CheckpointDigest(uri=redact_uri(fetched.uri), sha256=fetched.sha256) if fetched else None,
        backend=trace.backend,
        path=trace.path,
        timings=timings,
        versions=trace.versions,
        **extra,
    )


def _pipeline(request: RefitRequest, workdir: Path, progress: Progress, trace: _Trace) -> RefitResult:
    if request.publish is None:
        raise WorkerError("publish: a refit Job publishes what it refits; the request names no publish.uri")
    with progress.stage("fetch"):
        _fetch_all(request, workdir, progress, trace)
    art = trace.artifacts
    with progress.stage("check"):
        kind = detect(art["engine"].path, request.engine.uri)
        trace.backend = kind
        device = resolve_device(request.device, kind)
        progress.say("check", f"engine: {kind} program; device: {device}")
        backend = open_backend(kind, art["engine"].path, request.engine.uri, device)
        trace.versions.update(backend.versions())
        checkpoint = load_checkpoint(art["checkpoint"].path, request.checkpoint.uri)
        source = (
            programs.load_program(art["source"].path, f"source {art['source'].uri}")
            if "source" in art
            else None
        )
        if _check(backend, checkpoint, source, request):
            progress.say(
                "check",
                f"checkpoint ({checkpoint.format}) matches the engine: {len(checkpoint.state)} tensors",
            )
        else:
            progress.say(
                "check", "no weight schema in the engine and no --source: names are checked by the refit"
            )
        reference = _reference(checkpoint, source, request)
        given = art.get("inputs")
        file = (given.path, given.uri) if given else None
        generated = verification_inputs(request.verify, file, program_signature(reference))
        inputs = generated.tensors
    with progress.stage("refit"):
        work = RefitWork(checkpoint, reference, inputs, device, workdir, request.refit_path)
        refitted = backend.refit(work, progress)
        trace.path = refitted.path
        progress.say("refit", f"refitted via the {refitted.path.value} path")
    with progress.stage("verify"):
        report = _verify(backend, reference, inputs, device, tolerances(request))
        report = Report(report.verification, report.message + signature_note(request, generated))
        progress.say("verify", report.message)
    notes = " ".join(refitted.notes)
    if not report.verification.passed:
        message = f"{report.message}; nothing published" + (f" ({notes})" if notes else "")
        return _result(
            Outcome.VERIFICATION_FAILED, message, trace, progress, verification=report.verification
        )
    with progress.stage("publish"):
        refitted_file = workdir / "refitted.ep"
        backend.save(refitted_file)
        manifest = _manifest(request, trace, report, progress)
        published = publish(refitted_file, request.publish.uri, manifest)
        progress.say("publish", f"published {published.uri}")
    message = f"{report.message}; published {published.uri}" + (f" ({notes})" if notes else "")
    return _result(
        Outcome.PASSED, message, trace, progress, engine=published, verification=report.verification
    )


def _fetch_all(request: RefitRequest, workdir: Path, progress: Progress, trace: _Trace) -> None:
    """Every artifact in parallel, each bounded and checked against its pin; the first failure stops the
    other downloads."""
    wanted = {role: Wanted(a.uri, a.sha256) for role, a in artifacts(request).items()}
    trace.artifacts.update(
        fetch_all(wanted, workdir, max_bytes=request.max_artifact_bytes or DEFAULT_MAX_BYTES)
    )
    for role, fetched in trace.artifacts.items():
        pinned = " (pinned digest matches)" if wanted[role].sha256 else ""
        progress.say(
            "fetch", f"{role} {fetched.uri}: {fetched.size} bytes, sha256 {fetched.sha256[:12]}{pinned}"
        )


def artifacts(request: RefitRequest) -> dict[str, PinnedArtifact]:
    """The files a refit reads, by role (engine, checkpoint, source, inputs)."""
    found = {
        "engine": request.engine,
        "checkpoint": request.checkpoint,
        "source": request.source,
        "inputs": request.verify.inputs,
    }
    return {role: artifact for role, artifact in found.items() if artifact is not None}


def tolerances(request: RefitRequest) -> Tolerances:
    verify = request.verify
    return Tolerances(rtol=verify.rtol, atol=verify.atol, min_cosine_similarity=verify.min_cosine_similarity)


def resolve_device(requested: Device | str, kind: BackendKind | str) -> Device:
    """`auto` -> cuda when visible, else cpu; a TensorRT program needs CUDA (the Job and the server).
    Also takes the wire values (the serving runtime passes them)."""
    import torch

    requested, kind = Device(requested), BackendKind(kind)
    has_cuda = torch.cuda.is_available()
    if requested is Device.CUDA and not has_cuda:
        raise WorkerError("device cuda: no CUDA device is visible to this process")
    if kind is BackendKind.TENSORRT and (requested is Device.CPU or not has_cuda):
        raise WorkerError("the engine is a TensorRT program: it needs a CUDA device (device cuda or auto)")
    if requested is Device.AUTO:
        return Device.CUDA if has_cuda else Device.CPU
    return requested


def _check(
    backend: Backend, checkpoint: Checkpoint, source: ExportedProgram | None, request: RefitRequest
) -> bool:
    """Checkpoint (and source) against what the engine expects; False when nothing says what that is."""
    expected = backend.expected_weights(source)
    if expected is None:
        return False
    check_compatible(expected, checkpoint.state, f"checkpoint {request.checkpoint.uri}")
    if source is not None and request.source is not None:
        check_compatible(
            expected, programs.weights_of(source), f"source {request.source.uri} (against the engine)"
        )
    return True


def _reference(
    checkpoint: Checkpoint, source: ExportedProgram | None, request: RefitRequest
) -> ExportedProgram:
    """The PyTorch program that carries the new weights: the source program, else the checkpoint's own."""
    if source is not None:
        programs.swap_weights(source, checkpoint.state)
        return source
    if checkpoint.program is not None:
        return checkpoint.program
    raise WorkerError(
        f"checkpoint {request.checkpoint.uri} is a bare state_dict: pass --source (the torch.export program "
        "before compiling) so the refit can be verified against PyTorch"
    )


def signature_note(request: RefitRequest, generated: VerificationInputs) -> str:
    """Says so when the inputs came from the program's signature (spec.verify gave none)."""
    if request.verify.inputs is not None or request.verify.generate:
        return ""
    return f"; {generated.origin}, {tolerance_phrase(request.verify)}"


def _verify(
    backend: Backend,
    reference: ExportedProgram,
    inputs: list[torch.Tensor],
    device: Device,
    tolerances: Tolerances,
) -> Report:
    shapes = ", ".join(f"{list(t.shape)} {str(t.dtype).removeprefix('torch.')}" for t in inputs)
    try:
        actual = backend.run(inputs)
    except (RuntimeError, AssertionError, ValueError, TypeError) as exc:
        raise WorkerError.from_exc(f"the refitted engine does not run on the inputs ({shapes})", exc) from exc
    try:
        with exact_fp32(device):
            expected = programs.run(programs.to_device(reference, device), [t.to(device) for t in inputs])
    except (RuntimeError, AssertionError, ValueError, TypeError) as exc:
        raise WorkerError.from_exc(
            f"the reference program does not run on the inputs ({shapes})", exc
        ) from exc
    return verify(actual, expected, tolerances)


@contextmanager
def exact_fp32(device: str) -> Iterator[None]:
    """IEEE float32 on CUDA while the reference runs. PyTorch runs cuDNN convolutions in TF32 by default,
    which put the resnet50 reference itself 0.69 away from float64 (outputs up to ~1300; 0.0008 with TF32
    off): the reference must be the exact side of the comparison, whatever precision the engine uses."""
    if not device.startswith("cuda"):
        yield
        return
    import torch

    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _manifest(request: RefitRequest, trace: _Trace, report: Report, progress: Progress) -> dict[str, Any]:
    """What the published engine was made from and how: inputs' digests, versions, GPU, timings."""
    artifacts = {
        role: {"uri": redact_uri(f.uri), "sha256": f.sha256, "size": f.size}
        for role, f in trace.artifacts.items()
    }
    manifest: dict[str, Any] = {
        "apiVersion": "trtrefit.dev/manifest-v1",
        "createdAt": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "backend": trace.backend,
        "path": trace.path.value if trace.path else None,
        "artifacts": artifacts,
        "verification": report.verification.model_dump(by_alias=True),
        "tolerances": {
            "rtol": request.verify.rtol,
            "atol": request.verify.atol,
            "minCosineSimilarity": request.verify.min_cosine_similarity,
        },
        "versions": trace.versions,
        "timings": dict(progress.timings),
    }
    if request.verify.generate:
        manifest["generatedInputs"] = {
            "seed": request.verify.seed or 0,
            "specs": [item.wire() for item in request.verify.generate],
        }
    elif request.verify.inputs is None:
        manifest["generatedInputs"] = {"seed": request.verify.seed or 0, "from": "program signature"}
    return manifest
