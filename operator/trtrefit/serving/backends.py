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

        # One of the server's two copies: a failed refit is never promoted, so it keeps no put-back
        # (which would hold one more copy of the weights on the GPU).
        live: LiveProgram = TensorRTLive(engine_path, label, source_program, device, put_back=False)
        return live
    if kind == "exported":
        from trtrefit.serving.exported import ExportedLive

        return ExportedLive(engine_path, label, source_program, device)
    raise WorkerError(f"engine {label}: unknown backend {kind!r} (expected one of {', '.join(KINDS)})")
