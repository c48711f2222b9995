"""The `exported` backend: a plain torch.export program whose refit is a swap of its parameters and
buffers. Runs anywhere PyTorch runs (CPU in CI, a laptop dry run), through the same check, verify and
publish code as the TensorRT backend."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from trtrefit.api.jobspec import Device
from trtrefit.api.result import RefitPath
from trtrefit.worker import programs
from trtrefit.worker.backends import BackendKind, Refitted, RefitWork
from trtrefit.worker.formats import TensorSpec
from trtrefit.worker.progress import Progress

if TYPE_CHECKING:
    import torch
    from torch.export import ExportedProgram


class ExportedBackend:
    name = BackendKind.EXPORTED

    def __init__(self, engine: Path, label: str, device: Device) -> None:
        self._program = programs.load_program(engine, f"engine {label}")
        self._device = device
        self._runnable: ExportedProgram | None = None

    def expected_weights(self, source: ExportedProgram | None) -> dict[str, TensorSpec]:
        return {name: TensorSpec.of(t) for name, t in programs.weights_of(self._program).items()}

    def refit(self, work: RefitWork, progress: Progress) -> Refitted:
        programs.swap_weights(self._program, work.checkpoint.state)
        progress.say("refit", f"swapped {len(self._program.state_dict)} parameters and buffers")
        self._runnable = programs.to_device(self._program, self._device)
        return Refitted(RefitPath.EXPORTED)

    def run(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if self._runnable is None:
            raise RuntimeError("run() before refit()")
        return programs.run(self._runnable, [t.to(self._device) for t in inputs])

    def save(self, path: Path) -> None:
        programs.save_program(self._program, path)

    def versions(self) -> dict[str, str]:
        import torch

        return {"torch": torch.__version__, "python": platform.python_version()}
