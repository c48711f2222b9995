"""Two copies of the live program, so that no request ever waits for a refit: one copy serves, the other
(the standby) takes the refit and its verification while requests keep flowing, and the lock inference
takes is held only to swap them.

    staged = pair.stage(state)          # check, plan, copy to the device: the standby's own staging
    pair.load(staged)                   # set + refit the standby's engines (or rebind its tensors)
    outputs = pair.verify_run(inputs)   # the verification inputs through the standby
    with lock: pair.promote()           # verified: the standby serves from the next request on

A refit that fails or misses its tolerances is never promoted, so what serves is never touched: there is
nothing to roll back. The price is a second copy of every engine and weight on the device, and a second
priming refit at start-up (each copy's Refitters need their slow first refit).

The serving copy runs on the high-priority serving stream, the standby on the low-priority standby stream
(serving/streams.py); `promote` swaps the streams with the copies. Before the standby's weights change,
`load` waits for the GPU work already queued, which includes the last requests the copy served before it
became the standby.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from trtrefit.serving import streams

if TYPE_CHECKING:
    import torch

    from trtrefit.serving.live import LiveProgram, Staged
    from trtrefit.worker.formats import TensorSpec


class StandbyPair:
    def __init__(self, open_copy: Callable[[], LiveProgram]) -> None:
        self._serving = open_copy()
        self._standby = open_copy()
        self.backend = self._serving.backend
        self.device = self._serving.device
        self.place_streams()

    @property
    def serving(self) -> LiveProgram:
        return self._serving

    @property
    def standby(self) -> LiveProgram:
        return self._standby

    def expected_weights(self) -> dict[str, TensorSpec]:
        return self._serving.expected_weights()

    def stage(self, state: Mapping[str, torch.Tensor]) -> Staged:
        """Prepared for the standby (only `load` takes it); outside the lock."""
        return self._standby.stage(state)

    def load(self, staged: Staged) -> None:
        """The standby computes with `staged` from now on; outside the lock, nothing that serves changes."""
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(self.device)  # requests it served before its last swap are finished
        self._standby.apply(staged)

    def verify_run(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The standby's outputs for the verification inputs (run on the standby stream); outside the lock."""
        return self._standby.infer(inputs)

    def promote(self) -> None:
        """The standby serves, the copy that served becomes the standby. Caller holds the lock inference
        takes: no request is between choosing a copy and queueing its work."""
        self._serving, self._standby = self._standby, self._serving
        self.place_streams()

    def infer(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The serving copy's outputs. Caller holds the lock inference takes."""
        return self._serving.infer(inputs)

    def place_streams(self) -> None:
        """Each copy on its stream (again, after serving/streams.py changed them). The caller holds the
        lock inference takes, or nothing serves yet."""
        if self.device.startswith("cuda"):
            self._serving.run_on(streams.serving_stream(self.device))
            self._standby.run_on(streams.standby_stream(self.device))
