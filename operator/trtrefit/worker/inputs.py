"""Verification inputs: a safetensors file (`input_0`, `input_1`, ... in call order), tensors generated
from shapes and dtypes with a seed, or (neither given) tensors generated from the program's own input
signature, so a refit Job, a serving pod and a laptop see the same numbers."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trtrefit.worker.errors import WorkerError

if TYPE_CHECKING:
    import torch
    from torch.export import ExportedProgram

    from trtrefit.api.spec import GeneratedInput, VerifySpec

FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")
INT_DTYPES = ("int64", "int32", "int16", "int8", "uint8", "bool")
_INDEX = re.compile(r"(\d+)$")
DEFAULT_SEED = 0


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


def signature_specs(program: ExportedProgram) -> list[InputSpec]:
    """The generator's specs from the program's own input signature: each user input's placeholder shape
    and dtype. A dynamic dimension takes the smallest size its range allows (at least 1); one without an
    upper bound is refused, since nothing says which sizes the engine was built for."""
    import torch

    placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    ranges = program.range_constraints
    specs: list[InputSpec] = []
    for position, name in enumerate(program.graph_signature.user_inputs):
        where = f"program input {position} ({name!r})"
        value = placeholders[name].meta.get("val") if name in placeholders else None
        if not isinstance(value, torch.Tensor):
            raise WorkerError(
                f"verify: {where} is not a tensor, so no inputs can be generated for it; set "
                "spec.verify.inputs (a safetensors file) or spec.verify.generate"
            )
        dims: list[int] = []
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, int):
                dims.append(dim)
                continue
            expr = dim.node.expr
            sizes = {}
            for symbol in expr.free_symbols:
                bounds = ranges.get(symbol)
                if bounds is None or not bounds.upper.is_Integer:  # int_oo is not
                    raise WorkerError(
                        f"verify: {where} dimension {axis} is dynamic ({dim}) without an upper bound; set "
                        "spec.verify.inputs or spec.verify.generate, or export the program with bounds "
                        "(torch.export.Dim(..., min=1, max=N))"
                    )
                sizes[symbol] = max(int(bounds.lower), 1)
            dims.append(int(expr.subs(sizes)))
        dtype = str(value.dtype).removeprefix("torch.")
        if dtype not in FLOAT_DTYPES + INT_DTYPES:
            raise WorkerError(
                f"verify: {where} has dtype {dtype}, which the generator does not make; set "
                "spec.verify.inputs"
            )
        specs.append(InputSpec(tuple(dims), dtype, 0, 2 if dtype == "bool" else 10))
    if not specs:
        raise WorkerError("verify: the program takes no tensor inputs, so there is nothing to generate")
    return specs


@dataclass(frozen=True)
class Signature:
    """What a program's signature lets the generator make: its specs, or why it cannot (kept, not raised,
    so a server can read it once at load and refuse only a request that needs it)."""

    specs: tuple[InputSpec, ...] = ()
    refusal: str = ""


def program_signature(program: ExportedProgram) -> Signature:
    try:
        return Signature(specs=tuple(signature_specs(program)))
    except WorkerError as exc:
        return Signature(refusal=exc.message)


@dataclass(frozen=True)
class VerificationInputs:
    """The tensors and one phrase saying where they came from (for the result's message)."""

    tensors: list[torch.Tensor]
    origin: str


def verification_inputs(
    verify: VerifySpec, file: tuple[Path, str] | None, signature: Signature | None
) -> VerificationInputs:
    """The inputs a verification runs on: the fetched file (path, uri), else `verify.generate`, else the
    `signature` of the reference program (the source program, or the checkpoint's own)."""
    seed = DEFAULT_SEED if verify.seed is None else verify.seed
    if file is not None:
        path, uri = file
        return VerificationInputs(load_inputs(path, uri), "inputs from verify.inputs")
    if verify.generate:
        return VerificationInputs(
            generate(input_specs(verify.generate), seed), f"inputs generated (seed {seed})"
        )
    if signature is None:
        raise WorkerError("verify: no inputs given and no program whose signature could generate them")
    if signature.refusal:
        raise WorkerError(signature.refusal)
    return VerificationInputs(
        generate(signature.specs, seed), f"inputs generated from the program signature (seed {seed})"
    )


def tolerance_phrase(verify: VerifySpec) -> str:
    """`rtol=0.01 atol=0.01 cosine>=0.999`: the tolerances a verification applied."""
    return f"rtol={verify.rtol:g} atol={verify.atol:g} cosine>={verify.min_cosine_similarity:g}"
