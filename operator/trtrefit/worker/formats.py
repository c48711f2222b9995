"""Checkpoint formats and the pre-flight check against the engine.

A checkpoint is a safetensors state_dict (preferred), a `.pt2`/`.ep` torch.export program (its
parameters and buffers are the new weights; the program itself can serve as the verification reference),
or a torch `.pt`/`.pth` state_dict loaded with `weights_only=True` only. Nothing is ever unpickled beyond
what `weights_only=True` allows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trtrefit.worker.errors import WorkerError

if TYPE_CHECKING:
    import torch
    from torch.export import ExportedProgram

SAFETENSORS_SUFFIXES = (".safetensors",)
PROGRAM_SUFFIXES = (".pt2", ".ep")
PICKLE_SUFFIXES = (".pt", ".pth", ".bin")
_NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model")


@dataclass(frozen=True)
class TensorSpec:
    """What the engine expects of one named weight."""

    shape: tuple[int, ...]
    dtype: str

    @classmethod
    def of(cls, tensor: torch.Tensor) -> TensorSpec:
        return cls(tuple(int(d) for d in tensor.shape), dtype_name(tensor.dtype))


@dataclass
class Checkpoint:
    """New weights by name; `program` is set when the checkpoint was a torch.export program."""

    state: dict[str, torch.Tensor]
    format: str
    program: ExportedProgram | None = None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def detect_format(path: Path, label: str) -> str:
    """`safetensors`, `program` or `pickle`, from the name first and the leading bytes second."""
    suffix = Path(label.split("?", 1)[0]).suffix.lower() or path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return "safetensors"
    if suffix in PROGRAM_SUFFIXES:
        return "program"
    if suffix in PICKLE_SUFFIXES:
        return "pickle"
    with path.open("rb") as handle:
        head = handle.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if head.startswith(b"PK"):
        import zipfile

        with zipfile.ZipFile(path) as archive:
            if any(name.endswith("/archive_format") for name in archive.namelist()):
                return "program"
        return "pickle"
    raise WorkerError(
        f"checkpoint {label}: unknown format (expected .safetensors, .pt2/.ep or a weights-only .pt)"
    )


def load_checkpoint(path: Path, label: str) -> Checkpoint:
    """Load a checkpoint by format; every failure is one line naming `label`."""
    kind = detect_format(path, label)
    if kind == "safetensors":
        return Checkpoint(_load_safetensors(path, label), "safetensors")
    if kind == "program":
        from trtrefit.worker.programs import load_program, weights_of

        program = load_program(path, f"checkpoint {label}")
        return Checkpoint(weights_of(program), "program", program)
    return Checkpoint(_load_pickle(path, label), "pickle")


def _load_safetensors(path: Path, label: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WorkerError(f"checkpoint {label}: not a readable safetensors file: {exc}") from exc


def _load_pickle(path: Path, label: str) -> dict[str, torch.Tensor]:
    import pickle

    import torch

    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise WorkerError.from_exc(
            f"checkpoint {label}: not loadable with torch.load(weights_only=True)", exc
        ) from exc
    return _as_state_dict(loaded, label)


def _as_state_dict(loaded: object, label: str) -> dict[str, torch.Tensor]:
    import torch

    if isinstance(loaded, Mapping):
        for key in _NESTED_STATE_KEYS:
            nested = loaded.get(key)
            if (
                isinstance(nested, Mapping)
                and nested
                and all(isinstance(v, torch.Tensor) for v in nested.values())
            ):
                loaded = nested
                break
        if loaded and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()):
            return dict(loaded)
    raise WorkerError(f"checkpoint {label}: not a state_dict (expected a mapping of names to tensors)")


def check_compatible(
    expected: Mapping[str, TensorSpec], state: Mapping[str, torch.Tensor], label: str
) -> None:
    """Fail with one line, starting with `label` (e.g. `checkpoint s3://b/k.safetensors`), listing every
    missing and unexpected name and every shape or dtype mismatch."""
    problems: list[str] = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        problems.append(f"missing {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected {_names(unexpected)}")
    for name in sorted(set(expected) & set(state)):
        want, got = expected[name], TensorSpec.of(state[name])
        if got.shape != want.shape:
            problems.append(f"key '{name}' shape {list(got.shape)} does not match engine {list(want.shape)}")
        elif got.dtype != want.dtype:
            problems.append(f"key '{name}' dtype {got.dtype} does not match engine {want.dtype}")
    if problems:
        raise WorkerError(f"{label}: " + "; ".join(problems))


def _names(names: list[str]) -> str:
    noun = "key" if len(names) == 1 else f"{len(names)} keys"
    return f"{noun} " + ", ".join(f"'{n}'" for n in names)
