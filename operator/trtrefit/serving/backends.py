"""One factory for the live program of each backend, chosen from the engine file as the worker chooses.

The TensorRT class is imported only when a TensorRT program is opened: the exported backend (CI, laptops)
never needs torch_tensorrt installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from trtrefit.worker.errors import WorkerError

if TYPE_CHECKING:
    from torch.export import ExportedProgram

    from trtrefit.serving.live import LiveProgram

KINDS = ("tensorrt", "exported")


def open_live(
    kind: str, engine_path: Path, label: str, source_program: ExportedProgram | None, device: str
) -> LiveProgram:
    """The live program for `kind` (`tensorrt` | `exported`, from `worker.backends.detect`)."""
    if kind == "tensorrt":
        from trtrefit.serving.tensorrt import TensorRTLive

        live: LiveProgram = TensorRTLive(engine_path, label, source_program, device)
        return live
    if kind == "exported":
        from trtrefit.serving.exported import ExportedLive

        return ExportedLive(engine_path, label, source_program, device)
    raise WorkerError(f"engine {label}: unknown backend {kind!r} (expected one of {', '.join(KINDS)})")


def resolve_device(requested: str, kind: str) -> str:
    """`auto` -> cuda when visible, else cpu; a TensorRT program needs CUDA."""
    import torch

    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise WorkerError("device cuda: no CUDA device is visible to this process")
    if kind == "tensorrt" and (requested == "cpu" or not has_cuda):
        raise WorkerError("the engine is a TensorRT program: it needs a CUDA device (device cuda or auto)")
    if requested == "auto":
        return "cuda" if has_cuda else "cpu"
    return requested
