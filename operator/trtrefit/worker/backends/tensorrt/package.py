"""Write a refitted Torch-TensorRT program without instantiating its old engines: copy the torch.export
archive record by record and swap in the engines' new serialized state.

`torch.export.load` turns every engine into a live TensorRT engine (deserialize, execution context),
which costs seconds for a large model. The fast path therefore never loads the original program: it
repacks the archive with the refitted engines and loads only that, once, to verify exactly the file it
publishes. A custom object is stored the way torch's own pickler stores it: its class, NEWOBJ, the
`__getstate__` value (pickled by torch itself), BUILD.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_WRITER_OWNED = frozenset({"version", ".data/version", "byteorder", ".data/serialization_id"})


def custom_object_bytes(qualified_class: str, state: Any) -> bytes:
    """What `torch._C._pickle_save(obj)` writes for a TorchScript custom object of `qualified_class`
    (e.g. `__torch__.torch.classes.tensorrt.Engine`) whose `__getstate__` returns `state`."""
    import torch

    plain = torch._C._pickle_save(state)
    reader = torch._C.PyTorchFileReader(io.BytesIO(plain))
    body = bytes(reader.get_record("data.pkl"))
    if not (body.startswith(b"\x80\x02") and body.endswith(b".")):
        raise ValueError("unexpected TorchScript pickle framing")
    module, _, name = qualified_class.rpartition(".")
    framed = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")\x81" + body[2:-1] + b"b."
    buffer = io.BytesIO()
    writer = torch._C.PyTorchFileWriter(buffer)
    for record in reader.get_all_records():
        if record in _WRITER_OWNED:
            continue
        data = framed if record == "data.pkl" else bytes(reader.get_record(record))
        writer.write_record(record, data, len(data))
    writer.write_end_of_file()
    return buffer.getvalue()


def repack(source: Path, target: Path, replacements: Mapping[str, bytes]) -> None:
    """Copy the pt2 archive `source` to `target`, with the records named in `replacements` (paths inside
    the archive, e.g. `data/constants/custom_obj_0`) replaced."""
    import torch

    reader = torch._C.PyTorchFileReader(str(source))
    records = reader.get_all_records()
    missing = set(replacements) - set(records)
    if missing:
        raise KeyError(f"records not in the archive: {sorted(missing)}")
    writer = torch._C.PyTorchFileWriter(str(target))
    writer.set_min_version(6)  # as torch.export's PT2ArchiveWriter does
    for record in records:
        if record in _WRITER_OWNED:
            continue
        data = replacements[record] if record in replacements else bytes(reader.get_record(record))
        writer.write_record(record, data, len(data))
    writer.write_end_of_file()
