"""CUDA stream priorities in a live server: inference on the highest priority PyTorch allows, refit work
done outside the lock (copying new weights to the device, staging them, the verification reference) on the
lowest.

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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# The benchmark turns this off to measure what page-locked copies buy (bench/hot_refit.py).
PAGE_LOCKED_COPIES = True


def _priorities() -> tuple[int, int]:
    """(lowest, highest) priority PyTorch creates streams with; a lower number is a higher priority."""
    import torch

    lowest, highest = torch.cuda.Stream.priority_range()  # type: ignore[call-arg]  # static, typed as a method
    return int(lowest), int(highest)


@functools.cache
def serving_stream(device: str) -> torch.cuda.Stream:
    import torch

    return torch.cuda.Stream(device=torch.device(device), priority=_priorities()[1])  # type: ignore[no-untyped-call]


@functools.cache
def refit_stream(device: str) -> torch.cuda.Stream:
    import torch

    return torch.cuda.Stream(device=torch.device(device), priority=_priorities()[0])  # type: ignore[no-untyped-call]


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
