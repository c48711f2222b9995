"""Everything a refit does before it touches an engine, while requests keep flowing: fetch the checkpoint and
the verification inputs, check names, shapes and dtypes, copy the weights to the device and check their
finiteness there, stage them and compute the reference outputs (the source program with the new weights,
IEEE fp32).

A PINNED checkpoint is hashed and compared before anything parses it. An unpinned local one is only
reported, so its digest is computed on a thread of its own while it is parsed, checked and staged, and
waited for before the weights are applied (storage.PendingDigest says what that cannot detect). A local
file this process already hashed and that is unchanged since is not hashed again (worker/digests.py); its
identity is checked again after parsing. On a GPU the weights go to the device once, through page-locked
memory on the low-priority refit stream (serving/streams.py), for both the engines' staging and the
reference.

Nothing here touches what serves; every problem is a WorkerError naming the file and the problem.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trtrefit.api.request import RefitRequest
from trtrefit.api.result import CheckpointDigest
from trtrefit.serving import streams
from trtrefit.worker import programs
from trtrefit.worker.errors import WorkerError
from trtrefit.worker.formats import check_compatible, load_checkpoint
from trtrefit.worker.inputs import program_signature, verification_inputs
from trtrefit.worker.progress import Progress
from trtrefit.worker.refit import exact_fp32, signature_note
from trtrefit.worker.storage import (
    DEFAULT_MAX_BYTES,
    Fetched,
    PendingDigest,
    Retry,
    Wanted,
    digest_later,
    fetch_all,
)

if TYPE_CHECKING:
    import torch
    from torch.export import ExportedProgram

    from trtrefit.serving.exported import ExportedLive
    from trtrefit.serving.live import Staged
    from trtrefit.serving.standby import StandbyPair

# A serving pod answers a caller who waits: fail an unreachable URI within seconds, not a minute.
FETCH_RETRY = Retry(attempts=3, first_delay_s=0.2)


@dataclass(frozen=True)
class Prepared:
    checkpoint: CheckpointDigest
    staged: Staged
    weights: Mapping[str, torch.Tensor]  # the checkpoint on the device, as staged (start-up stages it twice)
    inputs: list[torch.Tensor]
    expected: list[torch.Tensor]
    note: str  # "; inputs generated from the program signature ..." when the request named no inputs


def prepare(
    request: RefitRequest,
    live: StandbyPair,
    reference: ExportedLive | None,
    workdir: Path,
    progress: Progress,
) -> Prepared:
    """Fetch, check, stage and compute the reference. A failure after the fetch is a PrepareError that
    still names the bytes it read; a failed fetch is a plain WorkerError."""
    with progress.stage("fetch"):
        checkpoint_file, inputs_file = _fetch(request, workdir)
    try:
        with progress.stage("check"):
            label = f"checkpoint {request.checkpoint.uri}"
            checkpoint = load_checkpoint(checkpoint_file.path, request.checkpoint.uri)
            check_compatible(live.expected_weights(), checkpoint.state, label)
            if isinstance(checkpoint_file, Fetched):
                checkpoint_file.check_unchanged()  # what was parsed is what was hashed
            file = (inputs_file.path, inputs_file.uri) if inputs_file else None
            # No inputs in the request: generated from the reference program's signature, as a Job does.
            signature = reference.signature if reference is not None else None
            if signature is None and checkpoint.program is not None:
                signature = program_signature(checkpoint.program)
            generated = verification_inputs(request.verify, file, signature)
            inputs = generated.tensors
        with progress.stage("stage"):
            staged, weights = _to_device_and_stage(live, checkpoint.state, label)
        with progress.stage("reference"), streams.refit_work(live.device):
            expected = _expected_outputs(
                reference, weights, checkpoint.program, inputs, request=request, device=live.device
            )
    except WorkerError as exc:
        raise PrepareError(exc.message, _digest_if_known(checkpoint_file)) from exc
    with progress.stage("digest"):  # the wait for an unpinned checkpoint's digest; 0 when pinned
        digest = _digest(checkpoint_file)
    return Prepared(digest, staged, weights, inputs, expected, signature_note(request, generated))


def _to_device_and_stage(
    live: StandbyPair, state: Mapping[str, torch.Tensor], label: str
) -> tuple[Staged, dict[str, torch.Tensor]]:
    """One copy of the checkpoint to the device, shared by the engines' staging and the reference
    (read-only in both), checked for finiteness there (no CPU pass over every weight), and staged."""
    with streams.refit_work(live.device):
        weights = {name: streams.to_device(t, live.device) for name, t in state.items()}
        check_finite(weights, label)
        return live.stage(weights), weights


def stage_for_standby(live: StandbyPair, weights: Mapping[str, torch.Tensor]) -> Staged:
    """`weights` (already on the device) staged for the standby copy, on the refit stream."""
    with streams.refit_work(live.device):
        return live.stage(weights)


class PrepareError(WorkerError):
    """A WorkerError that knows which checkpoint bytes it was about (for the result)."""

    def __init__(self, message: str, checkpoint: CheckpointDigest | None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


def _fetch(request: RefitRequest, workdir: Path) -> tuple[Fetched | PendingDigest, Fetched | None]:
    """The checkpoint and the inputs file, bounded like a Job's downloads; the first failure stops both.
    An unpinned local checkpoint comes back at once, its digest still being computed."""
    limit = request.max_artifact_bytes or DEFAULT_MAX_BYTES
    pending = None
    if request.checkpoint.sha256 is None:
        pending = digest_later(request.checkpoint.uri, max_bytes=limit)
    wanted = {}
    if pending is None:
        wanted["checkpoint"] = Wanted(request.checkpoint.uri, request.checkpoint.sha256)
    if request.verify.inputs is not None:
        wanted["inputs"] = Wanted(request.verify.inputs.uri, request.verify.inputs.sha256)
    try:
        fetched = fetch_all(wanted, workdir, FETCH_RETRY, max_bytes=limit)
    except BaseException:
        if pending is not None:
            _digest_if_known(pending)  # no digest left running behind a failed refit
        raise
    return pending or fetched["checkpoint"], fetched.get("inputs")


def _digest(file: Fetched | PendingDigest) -> CheckpointDigest:
    done = file.result() if isinstance(file, PendingDigest) else file
    return CheckpointDigest(uri=done.uri, sha256=done.sha256)


def _digest_if_known(file: Fetched | PendingDigest) -> CheckpointDigest | None:
    try:
        return _digest(file)
    except WorkerError:
        return None


def check_finite(state: Mapping[str, torch.Tensor], label: str) -> None:
    """Refuse NaN/inf weights before they get anywhere near the engine. One answer for all tensors (one
    synchronization on a GPU, not one per weight)."""
    import torch

    floats = [(name, t) for name, t in state.items() if t.is_floating_point()]
    if not floats:
        return
    finite = torch.stack([torch.isfinite(t).all() for _, t in floats]).tolist()
    bad = sorted(name for (name, _), ok in zip(floats, finite, strict=True) if not ok)
    if bad:
        names = ", ".join(f"'{n}'" for n in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise WorkerError(f"{label}: non-finite values (NaN/inf) in {names}")


def _expected_outputs(
    reference: ExportedLive | None,
    weights: Mapping[str, torch.Tensor],
    program: ExportedProgram | None,
    inputs: list[torch.Tensor],
    *,
    request: RefitRequest,
    device: str,
) -> list[torch.Tensor]:
    """The new weights run in PyTorch, IEEE fp32: in the server's own copy of the source program (used for
    nothing else, and refits run one at a time), else in the checkpoint's own program."""
    try:
        with exact_fp32(device):
            if reference is not None:
                reference.apply(reference.stage(weights))
                return reference.infer(inputs)
            if program is not None:
                program = programs.to_device(program, device)
                return programs.run(program, [t.to(device) for t in inputs])
    except (RuntimeError, AssertionError, ValueError, TypeError) as exc:
        shapes = ", ".join(f"{list(t.shape)} {str(t.dtype).removeprefix('torch.')}" for t in inputs)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WorkerError(f"the reference program does not run on the inputs ({shapes}): {first}") from exc
    raise WorkerError(
        f"checkpoint {request.checkpoint.uri} is a bare state_dict and the request names no source: "
        "nothing to verify it against (set source, the torch.export program before compiling)"
    )
