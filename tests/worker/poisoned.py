"""Hostile torch.export archives for the archive guard's tests: a real program written by
torch.export.save, then rewritten member by member so that loading it would run a payload that creates a
marker file. `tests/worker/test_archive_guard.py` proves each poison works on plain `torch.export.load`
before proving the guard refuses it."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


class Payload:
    """Unpickling this runs `exec(code)`, then yields `value` (a tensor for a quiet payload)."""

    def __init__(self, marker: Path, value: Any = None) -> None:
        self.code = f"open({str(marker)!r}, 'w').close()"
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        if self.value is None:
            return (exec, (self.code,))
        # (exec(code) or value): the payload runs and the weight still looks right
        return (_run_then, (self.code, self.value))


def _run_then(code: str, value: Any) -> Any:  # pragma: no cover - only ever called by a hostile unpickle
    exec(code)
    return value


def pickled(obj: Any) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def rewrite(
    source: Path,
    target: Path,
    replace: Mapping[str, bytes] | None = None,
    edit_json: Mapping[str, Callable[[Any], Any]] | None = None,
) -> Path:
    """Copy the archive `source` to `target`; `replace` sets members (paths inside the archive root, new
    ones added), `edit_json` rewrites JSON members in place."""
    replace = dict(replace or {})
    with zipfile.ZipFile(source) as archive:
        names = archive.namelist()
        root = names[0].split("/", 1)[0]
        contents = {name.split("/", 1)[1]: archive.read(name) for name in names}
    for member, edit in (edit_json or {}).items():
        contents[member] = json.dumps(edit(json.loads(contents[member]))).encode()
    contents.update(replace)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for member, data in contents.items():
            archive.writestr(f"{root}/{member}", data)
    return target


def pickled_weight(source: Path, target: Path, marker: Path) -> Path:
    """The first weight marked `use_pickle`, its file a pickle whose payload returns the real tensor."""
    import torch

    config_name = "data/weights/model_weights_config.json"
    with zipfile.ZipFile(source) as archive:
        name = next(n for n in archive.namelist() if n.endswith(config_name))
        config = json.loads(archive.read(name))["config"]
    fqn, meta = next(iter(config.items()))
    shape = [size["as_int"] for size in meta["tensor_meta"]["sizes"]]
    tensor = torch.nn.Parameter(torch.zeros(shape))

    def mark(document: dict[str, Any]) -> dict[str, Any]:
        document["config"][fqn]["use_pickle"] = True
        return document

    return rewrite(
        source,
        target,
        replace={f"data/weights/{meta['path_name']}": pickled(Payload(marker, tensor))},
        edit_json={config_name: mark},
    )


def pickled_constant(source: Path, target: Path, marker: Path) -> Path:
    """An extra tensor constant marked `use_pickle` (torch loads every entry of the config)."""

    def add(document: dict[str, Any]) -> dict[str, Any]:
        document["config"]["evil"] = {"path_name": "tensor_99", "is_param": False, "use_pickle": True,
                                      "tensor_meta": None}  # fmt: skip
        return document

    return rewrite(
        source,
        target,
        replace={"data/constants/tensor_99": pickled(Payload(marker))},
        edit_json={"data/constants/model_constants_config.json": add},
    )


def pickled_sample_inputs(source: Path, target: Path, marker: Path) -> Path:
    """Example inputs weights_only=True cannot read: torch retries them with weights_only=False."""
    return rewrite(source, target, replace={"data/sample_inputs/model.pt": pickled(Payload(marker))})


def legacy_weights(source: Path, target: Path, marker: Path) -> Path:
    """The legacy one-file weights layout (data/weights/model.pt), read before the config."""
    return rewrite(source, target, replace={"data/weights/model.pt": pickled({"w": Payload(marker)})})


def legacy_zip(source: Path, target: Path, marker: Path) -> Path:
    """The pre-2.8 zip layout torch.export.load falls back to when the pt2 reader finds no program;
    the program itself is `source`'s."""
    from torch._export.serde.schema import SCHEMA_VERSION

    with zipfile.ZipFile(source) as archive:
        program = archive.read(next(n for n in archive.namelist() if n.endswith("models/model.json")))
    with zipfile.ZipFile(target, "w") as archive:
        archive.writestr("version", ".".join(map(str, SCHEMA_VERSION)))
        archive.writestr("serialized_exported_program.json", program)
        archive.writestr("serialized_state_dict.pt", pickled({"w": Payload(marker)}))
        archive.writestr("serialized_constants.pt", pickled({}))
        archive.writestr("serialized_example_inputs.pt", pickled(((), {})))
    return target


def custom_object(source: Path, target: Path, qualified_class: str, state: Any) -> Path:
    """A custom object constant of `qualified_class` (a TorchScript class name) with `state`."""
    from trtrefit.worker.backends.tensorrt.package import custom_object_bytes

    def add(document: dict[str, Any]) -> dict[str, Any]:
        document["config"]["obj"] = {"path_name": "custom_obj_0", "is_param": False, "use_pickle": True}
        return document

    return rewrite(
        source,
        target,
        replace={"data/constants/custom_obj_0": custom_object_bytes(qualified_class, state)},
        edit_json={"data/constants/model_constants_config.json": add},
    )


def evaluated_text(source: Path, target: Path, key: str, value: Any) -> Path:
    """models/model.json with `key` set to `value` wherever it occurs (and at the top for guards_code)."""

    def edit(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: value if k == key else edit(v) for k, v in node.items()}
        if isinstance(node, list):
            return [edit(v) for v in node]
        return node

    def top(document: dict[str, Any]) -> dict[str, Any]:
        edited = edit(document)
        if key == "guards_code":
            edited["guards_code"] = value
        return dict(edited)

    return rewrite(source, target, edit_json={"models/model.json": top})


def custom_object_raw(source: Path, target: Path, data_pkl: bytes) -> Path:
    """A custom object constant whose TorchScript `data.pkl` is exactly `data_pkl`."""
    import torch

    buffer = io.BytesIO()
    writer = torch._C.PyTorchFileWriter(buffer)
    writer.write_record("data.pkl", data_pkl, len(data_pkl))
    writer.write_end_of_file()

    def add(document: dict[str, Any]) -> dict[str, Any]:
        document["config"]["obj"] = {"path_name": "custom_obj_0", "is_param": False, "use_pickle": True}
        return document

    return rewrite(
        source,
        target,
        replace={"data/constants/custom_obj_0": buffer.getvalue()},
        edit_json={"data/constants/model_constants_config.json": add},
    )
