"""Read a Torch-TensorRT program's engines straight from its torch.export archive: no torch_tensorrt, no
TensorRT, no GPU, so the pre-flight check runs before any GPU work.

An engine is a TorchScript custom object (`torch.classes.tensorrt.Engine`) stored under
`data/constants/custom_obj_N`; its state is torch_tensorrt's serialized-info list of strings (engine
bytes in base64 at ENGINE_IDX, a base64 pickle of compile metadata at SERIALIZED_METADATA_IDX). Both
pickles are read with allowlisting unpicklers: nothing outside the allowlist is imported or called;
anything else turns into an inert placeholder. So an untrusted archive cannot run code here.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from trtrefit.worker.errors import WorkerError

# torch_tensorrt's SerializedInfoIndex (core/runtime/runtime.h); checked against torch.ops.tensorrt on GPU.
NAME_IDX = 1
ENGINE_IDX = 3
SERIALIZED_METADATA_IDX = 7
ENGINE_CLASS = ("__torch__.torch.classes.tensorrt", "Engine")
ENGINE_QUALIFIED_NAME = ".".join(ENGINE_CLASS)
RECORD_FILE = "trtrefit-record.json"


@dataclass(frozen=True)
class EngineEntry:
    """One TensorRT engine of the program: where it sits (`fqn` in ExportedProgram.constants) and its
    serialized info."""

    fqn: str
    info: tuple[str, ...]
    record: str = ""  # where the engine object sits inside the archive, e.g. data/constants/custom_obj_0

    @property
    def name(self) -> str:
        return self.info[NAME_IDX] if len(self.info) > NAME_IDX else self.fqn

    def engine_bytes(self) -> bytes:
        return base64.b64decode(self.info[ENGINE_IDX])

    @cached_property
    def metadata(self) -> dict[str, Any]:
        encoded = self.info[SERIALIZED_METADATA_IDX] if len(self.info) > SERIALIZED_METADATA_IDX else ""
        if not encoded:
            return {}
        loaded = _MetadataUnpickler(io.BytesIO(base64.b64decode(encoded))).load()
        return loaded if isinstance(loaded, dict) else {}

    def weight_name_map(self) -> dict[str, Any]:
        """Engine weight name -> [state_dict name(s), dtype], as Torch-TensorRT cached it at compile time
        (minus its `constant_mapping` entry). Empty when the engine was compiled without the cache."""
        mapping = self.metadata.get("weight_name_map")
        if not isinstance(mapping, dict):
            return {}
        return {k: v for k, v in mapping.items() if isinstance(k, str) and k != "constant_mapping"}


class _Placeholder:
    """Stands in for any class the allowlist does not know: takes arguments and state, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _EngineState:
    """Stands in for torch.classes.tensorrt.Engine; keeps the serialized info it is given."""

    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _restore_type_tag(value: Any, _tag: str) -> Any:
    return value


def _same(value: Any) -> Any:
    return value


class _TorchScriptUnpickler(pickle.Unpickler):
    """data.pkl of a TorchScript custom object: only the Engine class and TorchScript's list helpers."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ENGINE_CLASS:
            return _EngineState
        if module == "torch.jit._pickle" and name == "restore_type_tag":
            return _restore_type_tag
        if module == "torch.jit._pickle" and name.startswith("build_") and name.endswith("list"):
            return _same
        raise pickle.UnpicklingError(f"unexpected {module}.{name} in a TensorRT engine object")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("unexpected tensor data in a TensorRT engine object")


_TORCH_DTYPES = frozenset(
    {"float32", "float16", "bfloat16", "float64", "float", "half", "double", "bool", "complex64"}
    | {"int8", "int16", "int32", "int64", "uint8", "float8_e4m3fn", "float8_e5m2", "complex128"}
)
_BUILTINS = {"set": set, "frozenset": frozenset, "list": list, "dict": dict, "tuple": tuple, "slice": slice}


class _MetadataUnpickler(pickle.Unpickler):
    """Torch-TensorRT's compile metadata (a pickled dict): plain containers are real, torch dtypes become
    their names, every other class becomes an inert placeholder."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file)
        self._placeholders: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in _BUILTINS:
            return _BUILTINS[name]
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("copyreg", "_reconstructor"):
            return _reconstructor
        if module == "torch" and name in _TORCH_DTYPES:
            return name  # torch.float32 and friends pickle as globals of module torch
        key = (module, name)
        if key not in self._placeholders:
            self._placeholders[key] = type(f"Placeholder[{module}.{name}]", (_Placeholder,), {})
        return self._placeholders[key]

    def persistent_load(self, pid: Any) -> Any:
        return _Placeholder(pid)


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    if isinstance(cls, type) and issubclass(cls, _Placeholder):
        return cls(state)
    raise pickle.UnpicklingError(f"refusing to reconstruct {cls!r}")


def _member(archive: zipfile.ZipFile, suffix: str) -> str | None:
    return next((n for n in archive.namelist() if n.endswith(suffix)), None)


def read_engines(path: Path, label: str) -> list[EngineEntry]:
    """Every TensorRT engine in the archive, in constants order; raises when there is none."""
    try:
        with zipfile.ZipFile(path) as archive:
            config_name = _member(archive, "data/constants/model_constants_config.json")
            if config_name is None:
                raise WorkerError(f"engine {label}: no constants config in the archive")
            root = config_name[: -len("model_constants_config.json")]
            config = json.loads(archive.read(config_name))["config"]
            entries = []
            for fqn, meta in config.items():
                if not meta.get("path_name", "").startswith("custom_obj_"):
                    continue
                state = _read_custom_object(archive.read(root + meta["path_name"]))
                if state is not None:
                    record = f"data/constants/{meta['path_name']}"
                    entries.append(EngineEntry(fqn, tuple(_text(s) for s in state), record))
    except (zipfile.BadZipFile, KeyError, ValueError, pickle.UnpicklingError) as exc:
        raise WorkerError(f"engine {label}: cannot read its TensorRT engines: {exc}") from exc
    if not entries:
        raise WorkerError(f"engine {label}: the program holds no TensorRT engine")
    return entries


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode("latin-1")


def _read_custom_object(blob: bytes) -> list[str | bytes] | None:
    """The Engine's serialized info from a TorchScript pickle archive; None for other object types."""
    with zipfile.ZipFile(io.BytesIO(blob)) as inner:
        data = _member(inner, "data.pkl")
        if data is None:
            return None
        try:
            obj = _TorchScriptUnpickler(io.BytesIO(inner.read(data))).load()
        except pickle.UnpicklingError:
            return None
    state = obj.state if isinstance(obj, _EngineState) else None
    if isinstance(state, tuple) and len(state) == 1 and isinstance(state[0], list):
        state = state[0]
    return state if isinstance(state, list) and all(isinstance(s, (str, bytes)) for s in state) else None


def read_weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of the program's own weights (those of ops it runs in PyTorch, outside the engines)."""
    with zipfile.ZipFile(path) as archive:
        name = _member(archive, "data/weights/model_weights_config.json")
        config = json.loads(archive.read(name))["config"] if name else {}
    shapes = {}
    for fqn, meta in config.items():
        sizes = (meta.get("tensor_meta") or {}).get("sizes", [])
        shapes[fqn] = tuple(int(size.get("as_int", -1)) for size in sizes)
    return shapes


def read_record(path: Path) -> dict[str, Any] | None:
    """The refit record `trtrefit compile` stored beside the program (extra/trtrefit-record.json)."""
    from trtrefit.worker.programs import read_extra_file

    text = read_extra_file(path, RECORD_FILE)
    if text is None:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None
