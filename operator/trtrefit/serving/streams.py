"""CUDA streams in a live server: inference (the serving copy's) on the highest priority PyTorch allows,
refit work (copying new weights to the device, staging them, the verification reference, the standby
copy's refit and verification run) on the lowest; optionally a refit's PyTorch work on SMs of its own
(serving/partition.py, `trtrefit serve --refit-sms`).

A stream of its own alone did not help requests (bench/results/hot_refit.md): at equal priority the GPU's
block scheduler serves kernels first come, first served, so a request waited behind refit kernels already
queued. At a higher priority its blocks are started before any waiting refit block (running blocks are not
preempted).

Copies between host and GPU go through page-locked (pinned) host memory: a copy from pageable memory goes
through the driver's own staging buffers, shared by every copy of the process, so a request's few KB of
outputs waited behind a refit's hundreds of MB of weights. Page-locked blocks come from PyTorch's caching
host allocator, so a refit reuses the previous refit's blocks instead of page-locking afresh.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from trtrefit.serving.partition import Partition

# The benchmark turns this off to measure what page-locked copies buy (bench/hot_refit.py).
PAGE_LOCKED_COPIES = True


def _priorities() -> tuple[int, int]:
    """(lowest, highest) priority PyTorch creates streams with; a lower number is a higher priority."""
    import torch

    lowest, highest = torch.cuda.Stream.priority_range()  # type: ignore[call-arg]  # static, typed as a method
    return int(lowest), int(highest)


def serving_stream(device: str) -> torch.cuda.Stream:
    """The serving copy's inference, engines included: the highest priority, every SM."""
    return _whole_gpu_stream(device, _priorities()[1])


def standby_stream(device: str) -> torch.cuda.Stream:
    """The standby copy's refit and verification run (its engines): the lowest priority, every SM."""
    return _whole_gpu_stream(device, _priorities()[0])


def refit_stream(device: str) -> torch.cuda.Stream:
    """A refit's PyTorch work (copies to the device, staging, the reference): the lowest priority, on SMs
    of its own when `use_partition` split them."""
    partition = _PARTITIONS.get(device)
    return partition.refit if partition else _whole_gpu_stream(device, _priorities()[0])


def use_partition(device: str, refit_sms: int | None) -> Partition | None:
    """From now on, a refit's PyTorch work on `refit_sms` SMs of its own (serving/partition.py), or on the
    whole GPU again (None). Only the streams asked for afterwards change: the server sets it before
    loading, the benchmark between refits."""
    if refit_sms is None:
        _PARTITIONS.pop(device, None)
        return None
    from trtrefit.serving.partition import split

    _PARTITIONS[device] = split(device, refit_sms, _priorities()[0])
    return _PARTITIONS[device]


_PARTITIONS: dict[str, Partition] = {}


@functools.cache
def _whole_gpu_stream(device: str, priority: int) -> torch.cuda.Stream:
    import torch

    return torch.cuda.Stream(device=torch.device(device), priority=priority)  # type: ignore[no-untyped-call]


@contextmanager
def refit_work(device: str) -> Iterator[None]:
    """Queue the block's GPU work on the refit stream and wait for it at the end, so what it made is ready
    for the lock and none of it is still queued when the lock is taken. A no-op off CUDA."""
    if not device.startswith("cuda"):
        yield
        return
    import torch

    stream = refit_stream(device)
    stream.wait_stream(torch.cuda.current_stream(torch.device(device)))
    with torch.cuda.stream(stream):
        yield
    stream.synchronize()


def run_on_stream(
    stream: torch.cuda.Stream | None, run: Callable[[], list[torch.Tensor]]
) -> list[torch.Tensor]:
    """`run()` with `stream` as the current stream (after what the caller's stream queued before it); its
    outputs are safe to use on the caller's stream. Without a stream, `run()` as it is."""
    if stream is None:
        return run()
    import torch

    caller = torch.cuda.current_stream(stream.device)
    stream.wait_stream(caller)  # inputs the caller made on its stream are ready first
    with torch.cuda.stream(stream):
        outputs = run()
    caller.wait_stream(stream)
    for output in outputs:
        if output.is_cuda:  # its memory is not reused before the caller is done with it
            output.record_stream(caller)
    return outputs


def to_device(tensor: torch.Tensor, device: str) -> torch.Tensor:
    """`tensor` on `device`; from host to a GPU through a page-locked copy, queued on the current stream
    (the caller synchronizes it, e.g. at the end of `refit_work`)."""
    if not device.startswith("cuda") or tensor.device.type != "cpu" or not PAGE_LOCKED_COPIES:
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def to_host(tensor: torch.Tensor) -> torch.Tensor:
    """A GPU tensor copied to page-locked host memory (returns when the bytes are there)."""
    if not tensor.is_cuda:
        return tensor
    if not PAGE_LOCKED_COPIES:
        return tensor.cpu()
    import torch

    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor)
    return host
