"""Which stage of a hot refit slows inference down: the same client load as hot_refit.py's, while a
background thread repeats ONE piece of the server's refit at a time, as ServingModel runs it:

  fetch               hash the local checkpoint file (storage.fetch)
  check               load it, check names/shapes against the program, check finiteness
  stage               live.stage(state): plan + materialize every engine weight on the GPU
  reference           the server's reference: its own live copy of the source program on the GPU, the new
                      weights staged and applied to it, run in IEEE fp32 (as serving/prepare.py does)
  lock                under the server's lock: live.apply + the verification inference
  reference_side_stream  the same reference on a CUDA stream of its own (the serving inference waits on the
                      default stream): does moving it off the default stream help?

It reaches into ServingModel's loaded program and lock (private attributes): a measurement, not an API.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def attribute(
    model: Any, root: Path, inputs: list[Any], load: Callable[[Callable[[], None], float], dict[str, Any]]
) -> dict[str, Any]:
    """p50/p99/max inference latency (ms) and the piece's own median seconds, per piece; `load(piece)` runs
    the client load while a thread repeats `piece` (pausing `pause_s` between two runs)."""
    import torch
    from safetensors.torch import load_file

    from trtrefit.serving.prepare import check_finite
    from trtrefit.worker.formats import check_compatible, load_checkpoint
    from trtrefit.worker.refit import exact_fp32
    from trtrefit.worker.storage import fetch

    loaded = model._loaded
    live, reference = loaded.live, loaded.reference
    device = live.device
    on_gpu = device.startswith("cuda")

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize()

    files = [root / "A.safetensors", root / "B.safetensors"]
    states = [load_file(str(f)) for f in files]
    staged = [live.stage(s) for s in states]
    turn = Turn()

    def do_fetch() -> None:
        fetch(files[turn.next()].resolve().as_uri(), root)

    def do_check() -> None:
        path = files[turn.next()]
        checkpoint = load_checkpoint(path, str(path))
        check_compatible(live.expected_weights(), checkpoint.state, "checkpoint")
        check_finite(checkpoint.state, "checkpoint")

    def do_stage() -> None:
        live.stage(states[turn.next()])

    def do_reference() -> None:
        with exact_fp32(device):
            reference.apply(reference.stage(states[turn.next()]))
            outputs = reference.infer(inputs)
        sync()
        del outputs

    def do_lock() -> None:
        with model._lock:
            live.apply(staged[turn.next()])
            outputs = live.infer(inputs)
            sync()
            del outputs

    stream = torch.cuda.Stream() if on_gpu else None  # type: ignore[no-untyped-call]

    def do_reference_side() -> None:
        side = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
        with side:
            do_reference()

    pieces = {
        "fetch": do_fetch,
        "check": do_check,
        "stage": do_stage,
        "reference": do_reference,
        "lock": do_lock,
        "reference_side_stream": do_reference_side,
    }
    return {name: load(piece, LOCK_SPACING_S if name == "lock" else 0.0) for name, piece in pieces.items()}


class Turn:
    """Alternates 0, 1, 0, ... (checkpoint A, B)."""

    def __init__(self) -> None:
        self._i = 0

    def next(self) -> int:
        self._i += 1
        return self._i % 2


# threading.Lock is not fair: a loop that takes it again at once starves the clients (seen: 4 requests
# in 3 s). A real refit spends its prepare stages (~0.1-0.5 s) outside the lock between two holds.
LOCK_SPACING_S = 0.1


def timed_loop(piece: Callable[[], None], stop: Any, seconds: list[float], pause_s: float = 0.0) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        piece()
        seconds.append(time.perf_counter() - started)
        time.sleep(pause_s)
