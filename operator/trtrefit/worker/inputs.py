"""Verification inputs: a safetensors file (`input_0`, `input_1`, ... in call order) or tensors generated
from shapes and dtypes with a seed, so a refit Job and a laptop see the same numbers."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trtrefit.worker.errors import WorkerError

if TYPE_CHECKING:
    import torch

    from trtrefit.api.spec import GeneratedInput

FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")
INT_DTYPES = ("int64", "int32", "int16", "int8", "uint8", "bool")
_INDEX = re.compile(r"(\d+)$")


@dataclass(frozen=True)
class InputSpec:
    """One positional input: shape, dtype and, for integer inputs, the half-open value range."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    low: int = 0
    high: int = 10


def input_specs(items: Sequence[GeneratedInput]) -> list[InputSpec]:
    """The generator's specs from a request's `verify.generate` (already validated by its model)."""
    specs: list[InputSpec] = []
    for item in items:
        dtype = item.dtype.value
        low = 0 if item.low is None else item.low
        high = item.high if item.high is not None else (2 if dtype == "bool" else 10)
        if low >= high:
            raise WorkerError(f"verify.generate[{len(specs)}]: need low < high, got low={low} high={high}")
        specs.append(InputSpec(tuple(item.shape), dtype, low, high))
    return specs


def parse_shape(text: str) -> tuple[int, ...]:
    """`1,3,32,32` -> (1, 3, 32, 32), for `trtrefit compile --input-shape`."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError as exc:
        raise WorkerError(
            f"--input-shape {text!r}: expected comma-separated integers like 1,3,32,32"
        ) from exc
    if not shape or any(d <= 0 for d in shape):
        raise WorkerError(f"--input-shape {text!r}: every dimension must be positive")
    return shape


def generate(specs: Sequence[InputSpec], seed: int) -> list[torch.Tensor]:
    """Deterministic CPU tensors: standard normal floats, uniform integers in [low, high)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for spec in specs:
        dtype = getattr(torch, spec.dtype)
        if spec.dtype in FLOAT_DTYPES:
            value = torch.randn(spec.shape, generator=generator, dtype=torch.float32).to(dtype)
        else:
            value = torch.randint(spec.low, spec.high, spec.shape, generator=generator).to(dtype)
        tensors.append(value)
    return tensors


def save_inputs(tensors: Sequence[torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({f"input_{i}": t.contiguous().cpu() for i, t in enumerate(tensors)}, str(path))


def load_inputs(path: Path, label: str) -> list[torch.Tensor]:
    """Tensors of a safetensors file in call order: by the number each key ends with (`input_0`...)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        named = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WorkerError(f"inputs {label}: not a readable safetensors file: {exc}") from exc
    if not named:
        raise WorkerError(f"inputs {label}: holds no tensors")
    keyed = []
    for key in named:
        match = _INDEX.search(key)
        if match is None:
            raise WorkerError(
                f"inputs {label}: key {key!r} does not end with its position (input_0, input_1, ...)"
            )
        keyed.append((int(match.group(1)), key))
    keyed.sort()
    if [i for i, _ in keyed] != list(range(len(keyed))):
        raise WorkerError(f"inputs {label}: positions {[i for i, _ in keyed]} are not 0..{len(keyed) - 1}")
    return [named[key] for _, key in keyed]
