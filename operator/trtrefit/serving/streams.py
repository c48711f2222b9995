"""CUDA stream priorities in a live server: inference on the highest priority PyTorch allows, refit work
done outside the lock (copying new weights to the device, staging them, the verification reference) on the
lowest.

A stream of its own alone did not help requests (bench/results/hot_refit.md): at equal priority the GPU's
block scheduler serves kernels first come, first served, so a request waited behind refit kernels already
queued. At a higher priority its blocks are started before any waiting refit block (running blocks are not
preempted).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


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
