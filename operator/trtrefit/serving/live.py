"""The contract between the server and a backend's live program: engines (or tensors) kept for the life of
the process, refitted in place.

The server drives a refit in this order (only `apply` and the verification run hold the lock inference
takes; everything slow happens before it):

    staged = live.stage(checkpoint.state)            # outside the lock: check, plan, copy to the device
    previous = live.current()                        # the weights serving now, ready to be applied again
    with lock:
        live.apply(staged)                           # set + refit: milliseconds
        outputs = live.infer(verify_inputs)          # compared with the PyTorch reference
        if not verified: live.apply(previous)        # roll back: the same few milliseconds

`apply` never leaves a half-refitted program behind: when it raises, it has put `previous` back itself or
the program is unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from trtrefit.worker.formats import TensorSpec

if TYPE_CHECKING:
    import torch


class Staged(Protocol):
    """Weights prepared by `LiveProgram.stage` (backend-specific), ready for `apply`."""


class LiveProgram(Protocol):
    backend: str  # "tensorrt" | "exported"
    device: str

    def expected_weights(self) -> dict[str, TensorSpec]:
        """Names, shapes and dtypes a checkpoint must hold."""
        ...

    def stage(self, state: Mapping[str, torch.Tensor]) -> Staged:
        """Check and prepare new weights without touching what serves; WorkerError naming the first
        problem (missing key, wrong shape, a weight with no source)."""
        ...

    def current(self) -> Staged:
        """The weights serving now, as a Staged that `apply` can put back (holds references, no copy)."""
        ...

    def apply(self, staged: Staged) -> None:
        """Make `staged` the weights every following `infer` computes with. Caller holds the lock."""
        ...

    def infer(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Outputs for positional inputs (on any device; moved as needed). Caller holds the lock."""
        ...
