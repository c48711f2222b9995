"""SMs of the GPU split between serving and refit work (CUDA green contexts), so that a refit's kernels
(staging, the reference, the standby's refit and verification run) never occupy an SM a request needs.

Stream priorities alone leave requests waiting behind refit blocks that already run; the reference's fp32
GEMMs keep every SM busy for milliseconds (bench/results/hot_refit.md). A green context is a set of SMs:
one holds the refit streams' `refit_sms`, the other the rest, and each stream of serving/streams.py is
created inside its own. Memory is shared as in one context, so tensors and engines move freely between
the two. Memory bandwidth and the L2 cache stay shared.

Needs CUDA 12.4 or newer and `cuda-bindings` (torch depends on it on Linux); the split is rounded
to the GPU's SM granularity, and what was granted is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trtrefit.worker.errors import WorkerError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Partition:
    """Two streams whose kernels run on disjoint SMs, and the green contexts that keep those SMs."""

    serving: torch.cuda.ExternalStream
    refit: torch.cuda.ExternalStream
    serving_sms: int
    refit_sms: int
    contexts: tuple[Any, Any]  # CUgreenCtx handles: alive as long as the streams are


def split(device: str, refit_sms: int, priorities: tuple[int, int]) -> Partition:
    """`refit_sms` SMs (at least; rounded up by the driver) for a low-priority refit stream, the rest for a
    high-priority serving stream. `priorities` is (lowest, highest) as serving/streams.py uses them."""
    import torch

    try:
        from cuda.bindings import driver
    except ImportError as exc:
        raise WorkerError(
            "--refit-sms needs the cuda-bindings package (pip install 'trtrefit[worker]' installs it)"
        ) from exc
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    torch.cuda.init()  # type: ignore[no-untyped-call]  # the primary context first, as the driver advises before green contexts
    _check(driver.cuInit(0), "cuInit")
    cudev = _check(driver.cuDeviceGet(index), "cuDeviceGet")
    whole = _check(
        driver.cuDeviceGetDevResource(cudev, driver.CUdevResourceType.CU_DEV_RESOURCE_TYPE_SM),
        "cuDeviceGetDevResource",
    )
    total = int(whole.sm.smCount)
    if not 0 < refit_sms < total:
        raise WorkerError(f"--refit-sms {refit_sms}: the GPU has {total} SMs; give between 1 and {total - 1}")
    groups, count, rest = _check(
        driver.cuDevSmResourceSplitByCount(1, whole, 0, refit_sms), "cuDevSmResourceSplitByCount"
    )
    if count != 1 or int(rest.sm.smCount) == 0:
        raise WorkerError(f"--refit-sms {refit_sms}: the GPU's {total} SMs cannot be split that way")
    flags = driver.CUstream_flags.CU_STREAM_NON_BLOCKING
    lowest, highest = priorities
    streams = []
    contexts = []
    for resource, priority in ((rest, highest), (groups[0], lowest)):
        desc = _check(driver.cuDevResourceGenerateDesc([resource], 1), "cuDevResourceGenerateDesc")
        green = _check(
            driver.cuGreenCtxCreate(desc, cudev, driver.CUgreenCtxCreate_flags.CU_GREEN_CTX_DEFAULT_STREAM),
            "cuGreenCtxCreate",
        )
        handle = _check(driver.cuGreenCtxStreamCreate(green, flags, priority), "cuGreenCtxStreamCreate")
        contexts.append(green)
        stream = torch.cuda.ExternalStream(int(handle), device=torch.device("cuda", index))  # type: ignore[no-untyped-call]
        streams.append(stream)
    return Partition(
        serving=streams[0],
        refit=streams[1],
        serving_sms=int(rest.sm.smCount),
        refit_sms=int(groups[0].sm.smCount),
        contexts=(contexts[0], contexts[1]),
    )


def _check(answer: Any, call: str) -> Any:
    """The value(s) after a cuda-bindings call's CUresult, or WorkerError naming the call."""
    from cuda.bindings import driver

    error, *values = answer if isinstance(answer, tuple) else (answer,)
    if error != driver.CUresult.CUDA_SUCCESS:
        raise WorkerError(f"{call} failed: {error.name} (SM partitioning needs CUDA 12.4+ and a GPU with it)")
    return values[0] if len(values) == 1 else tuple(values)
