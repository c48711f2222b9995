"""The exported backend's live program: a plain torch.export program, unlifted once into a module whose
parameters and buffers are rebound to the staged tensors on `apply`.

Rebinding (not copying into the old storage) keeps `current()` free: it returns references to the tensors
it computes with now, and applying them again goes back to them. The server applies only to its standby
copy (serving/standby.py), which no request runs, so no forward pass sees a mix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trtrefit.serving import streams
from trtrefit.worker import programs
from trtrefit.worker.errors import WorkerError
from trtrefit.worker.formats import TensorSpec, check_compatible
from trtrefit.worker.inputs import program_signature

if TYPE_CHECKING:
    import torch
    from torch.export import ExportedProgram


@dataclass(frozen=True)
class ExportedStaged:
    """New tensors by name, already on the device, wrapped as parameters where the program has one."""

    tensors: Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class _Slot:
    """Where one weight lives in the unlifted module: the owning submodule and its attribute name."""

    owner: torch.nn.Module
    attr: str
    is_parameter: bool


class ExportedLive:
    """LiveProgram for a plain torch.export program; `source_program` is unused (the engine is itself the
    PyTorch graph) and accepted for the common factory signature."""

    backend = "exported"

    def __init__(
        self, engine_path: Path, label: str, source_program: ExportedProgram | None, device: str
    ) -> None:
        del source_program
        self.device = device
        program = programs.to_device(programs.load_program(engine_path, f"engine {label}"), device)
        self._expected = {name: TensorSpec.of(t) for name, t in programs.weights_of(program).items()}
        self.signature = program_signature(program)  # for a request that gives no verify inputs
        with programs.quiet_torch():
            self._module = program.module()
        self._slots = {name: self._slot(name) for name in self._expected}
        self._stream: torch.cuda.Stream | None = None

    def _slot(self, name: str) -> _Slot:
        path, _, attr = name.rpartition(".")
        owner = self._module.get_submodule(path) if path else self._module
        if attr in owner._parameters:
            return _Slot(owner, attr, is_parameter=True)
        if attr in owner._buffers:
            return _Slot(owner, attr, is_parameter=False)
        raise WorkerError(f"engine: weight {name!r} is neither a parameter nor a buffer of the program")

    def expected_weights(self) -> dict[str, TensorSpec]:
        return dict(self._expected)

    def stage(self, state: Mapping[str, torch.Tensor]) -> ExportedStaged:
        import torch

        check_compatible(self._expected, state, "checkpoint")
        tensors: dict[str, torch.Tensor] = {}
        for name, slot in self._slots.items():
            value = state[name].detach().to(self.device)
            tensors[name] = torch.nn.Parameter(value, requires_grad=False) if slot.is_parameter else value
        return ExportedStaged(tensors)

    def current(self) -> ExportedStaged:
        tensors = {}
        for name, slot in self._slots.items():
            store = slot.owner._parameters if slot.is_parameter else slot.owner._buffers
            value = store[slot.attr]
            assert value is not None
            tensors[name] = value
        return ExportedStaged(tensors)

    def apply(self, staged: object) -> None:
        if not isinstance(staged, ExportedStaged) or set(staged.tensors) != set(self._slots):
            raise TypeError("apply() takes what this program's stage() or current() returned")
        # Validated above, so the loop below cannot fail half-way.
        for name, slot in self._slots.items():
            store = slot.owner._parameters if slot.is_parameter else slot.owner._buffers
            store[slot.attr] = staged.tensors[name]  # type: ignore[assignment]

    def infer(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        import torch
        from torch.utils import _pytree

        def run() -> list[torch.Tensor]:
            result = self._module(*[t.to(self.device) for t in inputs])
            return [leaf for leaf in _pytree.tree_leaves(result) if isinstance(leaf, torch.Tensor)]

        with torch.inference_mode():
            return streams.run_on_stream(self._stream, run)

    def run_on(self, stream: torch.cuda.Stream) -> None:
        self._stream = stream
