"""SMs of the GPU kept for a refit's PyTorch work (CUDA green contexts): copying and staging the new
weights and, above all, the reference, whose IEEE-fp32 GEMMs otherwise occupy every SM for milliseconds
while requests wait for them (stream priorities decide which waiting block starts next, not what already
runs: bench/results/hot_refit.md).

Only PyTorch work moves there. TensorRT-RTX 1.4 cannot run a convolutional engine in a green context:
`enqueueV3` fails inside Myelin's cuDNN graph fusion and the outputs are never written, whether the context
is current or not and even when the engine and its execution context are created in it (measured on the
H200: bench/results/green_context_engines.md). So the serving copy and the standby copy's engines keep
whole-GPU streams, and serving still has every SM: it shares only the `refit_sms` with the refit.
Memory, L2 and the copy engines stay shared too.

Needs CUDA 12.4 or newer and `cuda-bindings` (torch depends on it on Linux); the driver rounds the count
up to the GPU's SM granularity, and what was granted is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trtrefit.worker.errors import WorkerError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Partition:
    """A stream whose kernels run only on `refit_sms` of the GPU's `total_sms`, and the green context that
    keeps those SMs (alive as long as the stream is)."""

    refit: torch.cuda.ExternalStream
    refit_sms: int
    total_sms: int
    context: Any  # CUgreenCtx


def split(device: str, refit_sms: int, priority: int) -> Partition:
    """A stream at `priority` on `refit_sms` SMs (at least; rounded up by the driver)."""
    import torch

    try:
        from cuda.bindings import driver
    except ImportError as exc:
        raise WorkerError(
            "--refit-sms needs the cuda-bindings package (pip install 'trtrefit[worker]' installs it)"
        ) from exc
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    torch.cuda.init()  # type: ignore[no-untyped-call]  # the primary context first, as the driver advises
    _check(driver.cuInit(0), "cuInit")
    cudev = _check(driver.cuDeviceGet(index), "cuDeviceGet")
    whole = _check(
        driver.cuDeviceGetDevResource(cudev, driver.CUdevResourceType.CU_DEV_RESOURCE_TYPE_SM),
        "cuDeviceGetDevResource",
    )
    total = int(whole.sm.smCount)
    if not 0 < refit_sms < total:
        raise WorkerError(f"--refit-sms {refit_sms}: the GPU has {total} SMs; give between 1 and {total - 1}")
    groups, count, _rest = _check(
        driver.cuDevSmResourceSplitByCount(1, whole, 0, refit_sms), "cuDevSmResourceSplitByCount"
    )
    if count != 1:
        raise WorkerError(f"--refit-sms {refit_sms}: the GPU's {total} SMs cannot be split that way")
    desc = _check(driver.cuDevResourceGenerateDesc([groups[0]], 1), "cuDevResourceGenerateDesc")
    green = _check(
        driver.cuGreenCtxCreate(desc, cudev, driver.CUgreenCtxCreate_flags.CU_GREEN_CTX_DEFAULT_STREAM),
        "cuGreenCtxCreate",
    )
    flags = driver.CUstream_flags.CU_STREAM_NON_BLOCKING
    handle = _check(driver.cuGreenCtxStreamCreate(green, flags, priority), "cuGreenCtxStreamCreate")
    stream = torch.cuda.ExternalStream(int(handle), device=torch.device("cuda", index))  # type: ignore[no-untyped-call]
    return Partition(refit=stream, refit_sms=int(groups[0].sm.smCount), total_sms=total, context=green)


def _check(answer: Any, call: str) -> Any:
    """The value(s) after a cuda-bindings call's CUresult, or WorkerError naming the call."""
    from cuda.bindings import driver

    error, *values = answer if isinstance(answer, tuple) else (answer,)
    if error != driver.CUresult.CUDA_SUCCESS:
        raise WorkerError(f"{call} failed: {error.name} (SM partitioning needs CUDA 12.4+ and a GPU with it)")
    return values[0] if len(values) == 1 else tuple(values)
