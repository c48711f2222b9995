"""Which stage of a hot refit slows inference down: the same client load as hot_refit.py's, while a
background thread repeats ONE piece of the server's refit at a time, as ServingModel runs it
(serving/prepare.py, serving/streams.py):

  check               load the checkpoint file, check names/shapes against the program (CPU)
  check_by_tensor     the same, the file read one tensor at a time (safe_open) instead of in one call
                      (load_file), which holds the interpreter lock throughout; `_si_0.5ms` with the GIL
                      switch interval at 0.5 ms, so a request thread waits at most about that long
  check_in_process    `check` in a process of its own (spawned once, kept): the serving process only waits
                      for its answer; nothing comes back but a count
  python_only         ~10 ms of pure Python bytecode, no I/O, no GPU: what any interpreter work beside
                      the requests costs them (they give the interpreter lock up and take it back several
                      times per request, around each GPU call)
  stage               copy the weights to the device (through page-locked memory), check finiteness there
                      and live.stage them (plan + materialize every engine weight), on the low-priority
                      refit stream
  reference           the server's reference: its own live copy of the source program on the GPU, the new
                      weights (already on the device) staged and applied to it, run in IEEE fp32 on the
                      refit stream
  reference_equal_priority  the same, with the serving stream at the refit stream's priority (as before
                      serving/streams.py): what the priorities buy
  standby             the standby copy takes staged weights and runs the verification inputs (apply +
                      verify, no lock: serving/standby.py), 0.1 s apart as between two real refits

It reaches into ServingModel's loaded program and lock (private attributes): a measurement, not an API.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def attribute(
    model: Any, root: Path, inputs: list[Any], load: Callable[[Callable[[], None], float], dict[str, Any]]
) -> dict[str, Any]:
    """p50/p99/max inference latency (ms) and the piece's own median seconds, per piece; `load(piece)` runs
    the client load while a thread repeats `piece` (pausing `pause_s` between two runs)."""
    pieces = refit_pieces(model, root, inputs)
    found = {
        "check": load(pieces["check"], 0.0),
        "check_by_tensor": load(pieces["check_by_tensor"], 0.0),
    }
    with switch_interval(0.0005):
        found["check_by_tensor_si_0.5ms"] = load(pieces["check_by_tensor"], 0.0)
    with process_pieces(checkpoint_files(root), model._loaded.live.expected_weights()) as more:
        found |= {name: load(piece, 0.0) for name, piece in more.items()}
    found |= {
        "stage": load(pieces["stage"], 0.0),
        "reference": load(pieces["reference"], 0.0),
    }
    with equal_priority(model):
        found["reference_equal_priority"] = load(pieces["reference"], 0.0)
    found["standby"] = load(pieces["standby"], PAUSE_S["standby"])
    return found


def refit_pieces(model: Any, root: Path, inputs: list[Any]) -> dict[str, Callable[[], None]]:
    """The pieces of a refit the module's docstring lists, each alternating checkpoints A and B, run on a
    started `ServingModel`'s loaded program (bench/two_process_mps.py runs them in a process of their own)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from trtrefit.serving import streams
    from trtrefit.serving.prepare import check_finite
    from trtrefit.worker.formats import check_compatible, load_checkpoint
    from trtrefit.worker.refit import exact_fp32

    loaded = model._loaded
    live, reference = loaded.live, loaded.reference
    device = live.device

    files = checkpoint_files(root)
    states = [load_file(str(f)) for f in files]
    with streams.refit_work(device):
        on_device = [{name: t.to(device) for name, t in state.items()} for state in states]
    staged: dict[tuple[int, int], Any] = {}
    turn = Turn()

    def do_check() -> None:
        path = files[turn.next()]
        checkpoint = load_checkpoint(path, str(path))
        check_compatible(live.expected_weights(), checkpoint.state, "checkpoint")

    def do_check_by_tensor() -> None:
        path = files[turn.next()]
        with safe_open(str(path), framework="pt") as handle:
            state = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118  # not a dict
        check_compatible(live.expected_weights(), state, "checkpoint")

    def do_stage() -> None:
        with streams.refit_work(device):
            weights = {name: streams.to_device(t, device) for name, t in states[turn.next()].items()}
            check_finite(weights, "checkpoint")
            live.stage(weights)

    def do_reference() -> None:
        with streams.refit_work(device), exact_fp32(device):
            reference.apply(reference.stage(on_device[turn.next()]))
            outputs = reference.infer(inputs)
        del outputs

    def do_standby() -> None:  # never promoted: the serving copy keeps what it serves
        index = turn.next()
        # staged weights belong to the copy that staged them; the standby changes with every promotion
        key = (id(live.standby), index)
        if key not in staged:
            staged[key] = live.stage(on_device[index])
        live.load(staged[key])
        outputs = live.verify_run(inputs)
        del outputs

    return dict(
        zip(REFIT_PIECES, (do_check, do_check_by_tensor, do_stage, do_reference, do_standby), strict=True)
    )


@contextlib.contextmanager
def equal_priority(model: Any) -> Iterator[None]:
    """The serving copy's stream at the refit stream's priority for the block (a TensorRT program on a
    GPU); switched under the server's lock, so no request runs half on one stream and half on the other."""
    import torch

    from trtrefit.serving import streams

    pair = model._loaded.live
    if not pair.device.startswith("cuda"):
        yield
        return
    lowest = streams.refit_stream(pair.device).priority
    with model._lock:
        pair.serving.run_on(torch.cuda.Stream(device=torch.device(pair.device), priority=lowest))  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        with model._lock:
            pair.place_streams()


@contextlib.contextmanager
def process_pieces(files: list[Path], expected: dict[str, Any]) -> Iterator[dict[str, Callable[[], None]]]:
    """`check_in_process` and `python_only` (see the module's docstring); the process is started, and
    its imports done, before the pieces are handed out."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    turn = Turn()
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(check_in_child, str(files[0]), expected).result()

        def check_in_process() -> None:
            pool.submit(check_in_child, str(files[turn.next()]), expected).result()

        yield {"check_in_process": check_in_process, "python_only": python_only}


def check_in_child(path: str, expected: dict[str, Any]) -> int:
    from trtrefit.worker.formats import check_compatible, load_checkpoint

    checkpoint = load_checkpoint(Path(path), path)
    check_compatible(expected, checkpoint.state, "checkpoint")
    return len(checkpoint.state)


def python_only() -> None:
    total = 0
    for i in range(300_000):  # bytecode only: nothing in it gives the interpreter lock up by itself
        total += i & 7


@contextlib.contextmanager
def switch_interval(seconds: float | None) -> Iterator[None]:
    """The GIL switch interval at `seconds` for the block (None: left as it is)."""
    saved = sys.getswitchinterval()
    if seconds is not None:
        sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(saved)


@contextlib.contextmanager
def sms_split(model: Any, refit_sms: int) -> Iterator[Any]:
    """A refit's PyTorch work on `refit_sms` SMs of its own for the block (`--refit-sms`); switched under
    the server's lock between refits."""
    from trtrefit.serving import streams

    pair = model._loaded.live
    with model._lock:
        partition = streams.use_partition(pair.device, refit_sms)
        pair.place_streams()
    try:
        yield partition
    finally:
        with model._lock:
            streams.use_partition(pair.device, None)
            pair.place_streams()


class Turn:
    """Alternates 0, 1, 0, ... (checkpoint A, B)."""

    def __init__(self) -> None:
        self._i = 0

    def next(self) -> int:
        self._i += 1
        return self._i % 2


def checkpoint_files(root: Path) -> list[Path]:
    """Checkpoints A and B, as hot_refit.py writes them; `Turn` alternates between them."""
    return [root / "A.safetensors", root / "B.safetensors"]


# What `refit_pieces` returns, by name.
REFIT_PIECES = ("check", "check_by_tensor", "stage", "reference", "standby")

# Seconds between two runs of a piece: a real refit spends its fetch, check, stage and reference
# (~0.1-0.5 s) between two standby refits.
PAUSE_S = {"standby": 0.1}


def timed_loop(piece: Callable[[], None], stop: Any, seconds: list[float], pause_s: float = 0.0) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        piece()
        seconds.append(time.perf_counter() - started)
        time.sleep(pause_s)
