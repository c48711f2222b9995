"""Refit backends, chosen from the engine file itself: `tensorrt` when the program runs TensorRT engines
(Torch-TensorRT's `execute_engine` op), `exported` for a plain torch.export program."""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from trtrefit.api.jobspec import Device
from trtrefit.api.request import RefitPolicy
from trtrefit.api.result import RefitPath
from trtrefit.worker.errors import WorkerError
from trtrefit.worker.formats import Checkpoint, TensorSpec
from trtrefit.worker.progress import Progress

if TYPE_CHECKING:
    import torch
    from torch.export import ExportedProgram

TENSORRT_MARKERS = (b"tensorrt.execute_engine", b"torch.classes.tensorrt")


class BackendKind(StrEnum):
    """Which backend refits an engine file: a Torch-TensorRT program, or a plain torch.export program."""

    TENSORRT = "tensorrt"
    EXPORTED = "exported"


@dataclass
class RefitWork:
    """Everything a backend needs to refit: the new weights, the reference (the source program carrying
    the new weights; its graph holds constants such as BatchNorm eps), the inputs and the device."""

    checkpoint: Checkpoint
    reference: ExportedProgram
    inputs: Sequence[torch.Tensor]
    device: Device  # resolved: cpu or cuda
    workdir: Path
    policy: RefitPolicy = RefitPolicy.AUTO  # TensorRT only; the exported backend has one path


@dataclass
class Refitted:
    """Which path ran and anything worth a line in the result message."""

    path: RefitPath
    notes: list[str] = field(default_factory=list)


class Backend(Protocol):
    name: BackendKind

    def expected_weights(self, source: ExportedProgram | None) -> dict[str, TensorSpec] | None:
        """Names, shapes and dtypes a checkpoint must hold for this engine (checked before any GPU work);
        None when neither the engine nor a source program says (the refit plan checks names then)."""
        ...

    def refit(self, work: RefitWork, progress: Progress) -> Refitted: ...

    def run(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Outputs of the refitted program on the refit's device."""
        ...

    def save(self, path: Path) -> None:
        """Write the refitted program as a torch.export archive."""
        ...

    def versions(self) -> dict[str, str]: ...


def detect(path: Path, label: str) -> BackendKind:
    """`tensorrt` or `exported`, from the serialized graph inside the archive (nothing is loaded)."""
    try:
        with zipfile.ZipFile(path) as archive:
            models = [n for n in archive.namelist() if "/models/" in n and n.endswith(".json")]
            if not models:
                raise WorkerError(f"engine {label}: a zip archive, not a torch.export program (no models/)")
            for name in models:
                body = archive.read(name)
                if any(marker in body for marker in TENSORRT_MARKERS):
                    return BackendKind.TENSORRT
    except zipfile.BadZipFile as exc:
        raise WorkerError(f"engine {label}: not a torch.export archive (.ep/.pt2): {exc}") from exc
    return BackendKind.EXPORTED


def open_backend(kind: BackendKind, engine: Path, label: str, device: Device) -> Backend:
    if kind is BackendKind.TENSORRT:
        from trtrefit.worker.backends.tensorrt.backend import TensorRTBackend

        return TensorRTBackend(engine, label, device)
    from trtrefit.worker.backends.exported import ExportedBackend

    return ExportedBackend(engine, label, device)
