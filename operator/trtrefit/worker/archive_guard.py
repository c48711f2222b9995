"""Inspect a torch.export archive (`.pt2`/`.ep`) before `torch.export.load` touches it, so that loading
an artifact never runs code from it.

What torch 2.11's loader (torch/export/__init__.py `load`, pt2_archive/_package.py `load_pt2`,
_export/serde/serialize.py) would otherwise do with a hostile archive, and what is refused here:
- a weight or tensor constant marked `use_pickle` in `data/{weights,constants}/<model>_*_config.json`
  is read with `torch.load(weights_only=False)`;
- the legacy layouts (`data/weights/<model>.pt`, `data/constants/<model>.pt`, and the pre-2.8 zip with
  `serialized_*.pt`, tried when the pt2 reader fails) go through `deserialize_torch_artifact`, which
  falls back to `weights_only=False` when the safe load fails; so do the example inputs
  (`data/sample_inputs/<model>.pt`), which are therefore loaded here with `weights_only=True` first;
- a custom object (`data/constants/custom_obj_N`) is instantiated by class name: only the TensorRT engine
  class is accepted;
- `data/aotinductor/` holds shared libraries the loader dlopens;
- text torch evaluates (symbolic expressions, guards, pytree specs) is checked in `archive_code`.
Records are read with torch's own zip reader, so this sees the bytes the loader will see.
"""

from __future__ import annotations

import io
import json
import pickletools
import zipfile
from pathlib import Path
from typing import Any

from trtrefit.worker.archive_code import UnsafeTextError, check_model_json
from trtrefit.worker.errors import WorkerError

ENGINE_CLASS = "__torch__.torch.classes.tensorrt Engine"  # as a pickle GLOBAL names it
ENGINE_CLASS_NAME = "torch.classes.tensorrt.Engine"
# TorchScript's pickler wraps typed lists in these helpers; the C++ unpickler knows them, nothing else.
_SCRIPT_HELPERS = frozenset(
    {"torch.jit._pickle restore_type_tag"}
    | {f"torch.jit._pickle build_{kind}list" for kind in ("int", "float", "bool", "tensor", "double", "")}
)
_LEGACY_MEMBERS = ("serialized_state_dict.pt", "serialized_constants.pt", "serialized_example_inputs.pt")


class _RefusedError(Exception):
    def __init__(self, member: str, why: str) -> None:
        super().__init__(f"{member}: {why}")


def check_archive(path: Path, label: str) -> None:
    """Raise one WorkerError line naming `label` and the offending member unless every part of the
    archive that `torch.export.load` would turn into objects is plain data."""
    try:
        _check_legacy_view(path)
        reader = _open(path, label)
        _check_records(reader)
    except _RefusedError as exc:
        raise WorkerError(f"{label}: refusing to load: {exc}") from None


def _check_legacy_view(path: Path) -> None:
    """torch.export.load retries a file the pt2 reader rejects as the pre-2.8 zip, read by Python's
    zipfile; its `serialized_*.pt` members would be unpickled."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return  # neither reader can open it; torch fails before unpickling anything
    for name in names:
        if name.rsplit("/", 1)[-1] in _LEGACY_MEMBERS:
            raise _RefusedError(name, "legacy pickled layout (torch would unpickle it)")


def _open(path: Path, label: str) -> Any:
    import torch

    try:
        return torch._C.PyTorchFileReader(str(path))
    except RuntimeError as exc:
        raise WorkerError.from_exc(f"{label}: not a loadable torch.export program", exc) from exc


def _check_records(reader: Any) -> None:
    from torch.export.pt2_archive import constants as pt2

    records = set(reader.get_all_records())
    for record in sorted(records):
        if record.startswith(pt2.AOTINDUCTOR_DIR):
            raise _RefusedError(record, "AOTInductor compiled code (a shared library torch would load)")
    prefix, suffix = pt2.MODELS_FILENAME_FORMAT.split("{}")
    models = sorted(
        r[len(prefix) : -len(suffix)] for r in records if r.startswith(prefix) and r.endswith(suffix)
    )
    if not models:
        raise _RefusedError(pt2.MODELS_DIR, "no program in the archive")
    for model in models:
        for legacy in (f"{pt2.WEIGHTS_DIR}{model}.pt", f"{pt2.CONSTANTS_DIR}{model}.pt"):
            if legacy in records:
                raise _RefusedError(legacy, "legacy pickled layout (torch would unpickle it)")
        _check_weights(reader, records, model)
        _check_constants(reader, records, model)
        _check_sample_inputs(reader, records, model)
        member = pt2.MODELS_FILENAME_FORMAT.format(model)
        try:
            check_model_json(_read(reader, member))
        except UnsafeTextError as exc:
            raise _RefusedError(member, str(exc)) from None


def _read(reader: Any, record: str) -> bytes:
    return bytes(reader.get_record(record))


def _payload_config(reader: Any, records: set[str], member: str) -> dict[str, dict[str, Any]]:
    if member not in records:
        return {}  # torch fails on the missing config before reading any payload
    try:
        config = json.loads(_read(reader, member))["config"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise _RefusedError(member, f"not a payload config: {exc}") from None
    if not isinstance(config, dict) or not all(isinstance(m, dict) for m in config.values()):
        raise _RefusedError(member, "not a payload config: expected an object of objects")
    return config


def _check_weights(reader: Any, records: set[str], model: str) -> None:
    from torch.export.pt2_archive import constants as pt2

    member = pt2.WEIGHTS_CONFIG_FILENAME_FORMAT.format(model)
    for fqn, meta in _payload_config(reader, records, member).items():
        if meta.get("use_pickle"):
            where = pt2.WEIGHTS_DIR + str(meta.get("path_name"))
            raise _RefusedError(
                where, f"weight '{fqn}' is pickled (use_pickle; torch unpickles it unrestricted)"
            )


def _check_constants(reader: Any, records: set[str], model: str) -> None:
    from torch.export.pt2_archive import constants as pt2

    member = pt2.CONSTANTS_CONFIG_FILENAME_FORMAT.format(model)
    for fqn, meta in _payload_config(reader, records, member).items():
        path_name = str(meta.get("path_name"))
        where = pt2.CONSTANTS_DIR + path_name
        if path_name.startswith(pt2.TENSOR_CONSTANT_FILENAME_PREFIX):
            if meta.get("use_pickle"):
                raise _RefusedError(
                    where, f"constant '{fqn}' is pickled (use_pickle; torch unpickles it unrestricted)"
                )
        elif path_name.startswith(pt2.CUSTOM_OBJ_FILENAME_PREFIX):
            if where not in records:
                raise _RefusedError(where, f"custom object '{fqn}' is missing")
            _check_custom_object(where, fqn, _read(reader, where))
        else:
            raise _RefusedError(where, f"constant '{fqn}' of an unknown kind")


def _check_custom_object(member: str, fqn: str, blob: bytes) -> None:
    """A TorchScript custom object: its data.pkl may name only the TensorRT engine class (first) and
    TorchScript's list helpers. Inspected opcode by opcode; nothing is unpickled."""
    import torch

    try:
        inner = torch._C.PyTorchFileReader(io.BytesIO(blob))
        body = bytes(inner.get_record("data.pkl"))
        ops = list(pickletools.genops(body))
    except (RuntimeError, ValueError) as exc:
        raise _RefusedError(
            member, f"custom object '{fqn}' is not a readable TorchScript object: {exc}"
        ) from None
    named = []
    for opcode, arg, _ in ops:
        if opcode.name in ("STACK_GLOBAL", "INST", "OBJ"):
            raise _RefusedError(member, f"custom object '{fqn}' uses the pickle opcode {opcode.name}")
        if opcode.name == "GLOBAL":
            named.append(str(arg))
    if not named or named[0] != ENGINE_CLASS:
        shown = named[0].replace(" ", ".") if named else "nothing"
        raise _RefusedError(member, f"custom object '{fqn}' is {shown}; only {ENGINE_CLASS_NAME} is accepted")
    for name in named[1:]:
        if name != ENGINE_CLASS and name not in _SCRIPT_HELPERS:
            raise _RefusedError(member, f"custom object '{fqn}' refers to {name.replace(' ', '.')}")


def _check_sample_inputs(reader: Any, records: set[str], model: str) -> None:
    """torch reads the example inputs with weights_only=True and, when that fails, again with
    weights_only=False: they must load the safe way (they are small)."""
    import torch
    from torch.export.pt2_archive import constants as pt2

    member = pt2.SAMPLE_INPUTS_FILENAME_FORMAT.format(model)
    if member not in records:
        return
    blob = _read(reader, member)
    if not blob:
        return  # torch reads empty example inputs as {} without unpickling
    try:
        torch.load(io.BytesIO(blob), weights_only=True)  # exactly torch's first try
    except Exception as exc:  # any failure at all is what sends torch to its weights_only=False retry
        raise _RefusedError(member, f"example inputs weights_only=True cannot read ({_why(exc)})") from None


def _why(exc: BaseException) -> str:
    """The useful line of a failed weights_only load ("Unsupported global: GLOBAL builtins.exec ...")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = next((line for line in lines if "WeightsUnpickler error:" in line), lines[0] if lines else "")
    detail = detail.split("WeightsUnpickler error:", 1)[-1].strip()
    return detail.split(". ", 1)[0] if detail else type(exc).__name__
