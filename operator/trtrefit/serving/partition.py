"""SMs of the GPU kept for a refit (CUDA green contexts), so its kernels do not occupy the SMs requests
need: stream priorities decide which waiting block starts next, not what already runs, and the
reference's IEEE-fp32 GEMMs otherwise hold every SM for milliseconds (bench/results/hot_refit.md).

Two ways, both behind `trtrefit serve --refit-sms N`:

- `engines=False`: only a refit's PyTorch work (copying and staging the new weights, the reference)
  runs on N SMs of its own; the engines of both copies keep whole-GPU streams.
- `engines=True`: the standby copy's engines (its refit and verification run) join the refit work on
  the N SMs, and the serving copy runs on the others, in a green context of its own. TensorRT runs
  an engine with its stream's green context made current (`entered`): on a green context's stream
  under the primary context, TensorRT-RTX 1.4's `enqueueV3` fails inside Myelin and the outputs were
  wrong (bench/results/gpu_tests_green_context.junit.xml, commit ad243b9).

Memory is shared with the primary context, so tensors and engines move freely between the two; memory
bandwidth, L2 and the copy engines stay shared. Needs CUDA 12.4 or newer and `cuda-bindings` (torch
depends on it on Linux); the driver rounds the count up to the GPU's SM granularity, and what was
granted is reported.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trtrefit.worker.errors import WorkerError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Partition:
    """A stream whose kernels run only on `refit_sms` of the GPU's `total_sms` and, with `engines`, one on
    the `serving_sms` left; `contexts` maps each stream's handle to its green context's CUcontext, and
    keeps the green contexts alive as long as the streams are."""

    refit: torch.cuda.ExternalStream
    refit_sms: int
    total_sms: int
    serving: torch.cuda.ExternalStream | None = None
    serving_sms: int = 0
    contexts: dict[int, Any] = field(default_factory=dict)
    green: tuple[Any, ...] = ()


def split(device: str, refit_sms: int, priorities: tuple[int, int], *, engines: bool = False) -> Partition:
    """A refit stream at the lowest of `priorities` (lowest, highest) on `refit_sms` SMs (at least;
    rounded up by the driver); with `engines`, a serving stream at the highest on the rest."""
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
    groups, count, rest = _check(
        driver.cuDevSmResourceSplitByCount(1, whole, 0, refit_sms), "cuDevSmResourceSplitByCount"
    )
    if count != 1 or (engines and int(rest.sm.smCount) == 0):
        raise WorkerError(f"--refit-sms {refit_sms}: the GPU's {total} SMs cannot be split that way")
    lowest, highest = priorities
    refit, refit_ctx, refit_green = _green_stream(driver, cudev, groups[0], lowest, index)
    contexts, green = {refit.cuda_stream: refit_ctx}, [refit_green]
    serving = None
    if engines:
        serving, serving_ctx, serving_green = _green_stream(driver, cudev, rest, highest, index)
        contexts[serving.cuda_stream] = serving_ctx
        green.append(serving_green)
    return Partition(
        refit=refit,
        refit_sms=int(groups[0].sm.smCount),
        total_sms=total,
        serving=serving,
        serving_sms=int(rest.sm.smCount) if engines else 0,
        contexts=contexts,
        green=tuple(green),
    )


def _green_stream(
    driver: Any, cudev: Any, resource: Any, priority: int, index: int
) -> tuple[torch.cuda.ExternalStream, Any, Any]:
    """A stream at `priority` in a new green context on `resource`; with the context's CUcontext and the
    green context itself."""
    import torch

    desc = _check(driver.cuDevResourceGenerateDesc([resource], 1), "cuDevResourceGenerateDesc")
    green = _check(
        driver.cuGreenCtxCreate(desc, cudev, driver.CUgreenCtxCreate_flags.CU_GREEN_CTX_DEFAULT_STREAM),
        "cuGreenCtxCreate",
    )
    flags = driver.CUstream_flags.CU_STREAM_NON_BLOCKING
    handle = _check(driver.cuGreenCtxStreamCreate(green, flags, priority), "cuGreenCtxStreamCreate")
    context = _check(driver.cuCtxFromGreenCtx(green), "cuCtxFromGreenCtx")
    stream = torch.cuda.ExternalStream(int(handle), device=torch.device("cuda", index))  # type: ignore[no-untyped-call]
    return stream, context, green


@contextmanager
def entered(context: Any) -> Iterator[None]:
    """`context` (a green context's CUcontext) current on this thread for the block. Only one thread at a
    time may have a green context current: each is entered by one role (serving under the inference
    lock, the refit under the refit gate)."""
    from cuda.bindings import driver

    _check(driver.cuCtxPushCurrent(context), "cuCtxPushCurrent")
    try:
        yield
    finally:
        _check(driver.cuCtxPopCurrent(), "cuCtxPopCurrent")


def _check(answer: Any, call: str) -> Any:
    """The value(s) after a cuda-bindings call's CUresult, or WorkerError naming the call."""
    from cuda.bindings import driver

    error, *values = answer if isinstance(answer, tuple) else (answer,)
    if error != driver.CUresult.CUDA_SUCCESS:
        raise WorkerError(f"{call} failed: {error.name} (SM partitioning needs CUDA 12.4+ and a GPU with it)")
    return values[0] if len(values) == 1 else tuple(values)
