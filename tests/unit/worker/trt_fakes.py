"""Byte-level stand-ins for a Torch-TensorRT program archive, written the way torch and torch_tensorrt
write them (checked against torch's own pickler), so the archive reader is tested without TensorRT."""

from __future__ import annotations

import base64
import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

BOOM: list[str] = []


def boom(message: str) -> None:
    """Would be a side effect: a safe reader never calls it."""
    BOOM.append(message)


class Settings:
    """Stands for torch_tensorrt's CompilationSettings (a class the reader must not import)."""

    def __init__(self) -> None:
        self.immutable_weights = False
        self.enabled_precisions = {torch.float32}


class Explosive:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return boom, ("unpickled!",)


def metadata(weight_name_map: dict[str, Any]) -> str:
    payload = {
        "settings": Settings(),
        "weight_name_map": {**weight_name_map, "constant_mapping": {}},
        "inout_symexprs": None,
        "output_tensors_are_unowned": False,
        "trap": Explosive(),
    }
    return base64.b64encode(pickle.dumps(payload)).decode()


def engine_info(name: str, engine: bytes, weight_name_map: dict[str, Any]) -> list[str]:
    info = [""] * 11
    info[0] = "8"
    info[1] = name
    info[2] = "0%8%0%0%NVIDIA H200"
    info[3] = base64.b64encode(engine).decode()
    info[4] = "x"
    info[5] = "output0"
    info[6] = "0"
    info[7] = metadata(weight_name_map)
    info[8] = "linux_x86_64"
    info[9] = "0"
    info[10] = "0"
    return info


def torchscript_object(info: list[str]) -> bytes:
    """What torch._C._pickle_save writes for a torch.classes.tensorrt.Engine: the class, NEWOBJ, its
    __getstate__ value (a List[str], pickled here by torch itself) and BUILD, in a small zip."""
    with zipfile.ZipFile(io.BytesIO(torch._C._pickle_save(info))) as listing:
        state = listing.read("archive/data.pkl")
    body = b"\x80\x02c__torch__.torch.classes.tensorrt\nEngine\nq\x00)\x81" + state[2:-1] + b"b."
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as inner:
        inner.writestr("archive/data.pkl", body)
        inner.writestr("archive/version", "3\n")
        inner.writestr("archive/byteorder", "little")
    return buffer.getvalue()


def write_trt_archive(path: Path, engines: dict[str, list[str]], extra: dict[str, str] | None = None) -> None:
    """A minimal pt2 archive whose constants are TensorRT engines and whose graph calls execute_engine."""
    root = path.stem
    config = {
        fqn: {"path_name": f"custom_obj_{i}", "is_param": False, "use_pickle": True, "tensor_meta": None}
        for i, fqn in enumerate(engines)
    }
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{root}/archive_format", "pt2")
        archive.writestr(f"{root}/archive_version", "0")
        archive.writestr(f"{root}/.data/version", "6\n")
        archive.writestr(f"{root}/byteorder", "little")
        archive.writestr(
            f"{root}/models/model.json", json.dumps({"target": "torch.ops.tensorrt.execute_engine.default"})
        )
        archive.writestr(f"{root}/data/constants/model_constants_config.json", json.dumps({"config": config}))
        for i, info in enumerate(engines.values()):
            archive.writestr(f"{root}/data/constants/custom_obj_{i}", torchscript_object(info))
        for name, text in (extra or {}).items():
            archive.writestr(f"{root}/extra/{name}", text)
