"""The contract between the server and a backend's live program: engines (or tensors) kept for the life of
the process, refitted in place.

The server keeps two of them (serving/standby.py): one serves, the other takes each refit while requests
keep flowing, and the two are swapped once the refit is verified. On the standby copy, with no lock held:

    staged = live.stage(checkpoint.state)            # check, plan, copy to the device
    live.apply(staged)                               # set + refit: milliseconds once primed
    outputs = live.infer(verify_inputs)              # compared with the PyTorch reference

When `apply` raises, the program is unchanged, or it has put the previous weights back itself, or (the
server's TensorRT copies, which keep no put-back: it would hold one more copy of the weights on the GPU)
it refuses to run until an `apply` passes; the pair never promotes such a copy. The tests and the GPU
benchmark also drive one copy directly, with `current()` to go back to the weights it had.
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
        """The weights serving now, as a Staged that `apply` can put back (holds references, no copy).
        A TensorRT copy made without put-back (the server's) keeps none: RuntimeError."""
        ...

    def apply(self, staged: Staged) -> None:
        """Make `staged` the weights every following `infer` computes with; nothing may be running on this
        copy (the server applies to the standby copy only)."""
        ...

    def infer(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Outputs for positional inputs (on any device; moved as needed), on the stream `run_on` set; safe
        to use on the caller's stream. The serving copy's caller holds the lock."""
        ...

    def run_on(self, stream: torch.cuda.Stream) -> None:
        """Queue this copy's GPU work (inference, engines included) on `stream` from now on."""
        ...
