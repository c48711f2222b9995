"""Repacking a program archive with new engine objects, checked with torch's own loaders on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.unit.worker import trt_fakes
from trtrefit.worker.backends.tensorrt.archive import ENGINE_QUALIFIED_NAME, read_engines
from trtrefit.worker.backends.tensorrt.package import custom_object_bytes, repack
from trtrefit.worker.programs import load_program, quiet_torch, run, save_program


def test_custom_objects_are_written_the_way_torch_loads_them() -> None:
    """A real TorchScript class (quantized linear params) written through our framing loads back equal."""
    weight = torch.quantize_per_tensor(torch.randn(3, 2), 0.1, 0, torch.qint8)
    try:
        original = torch.ops.quantized.linear_prepack(weight, torch.randn(3))
    except RuntimeError as exc:  # no quantized CPU engine on this machine
        pytest.skip(str(exc))
    state, qualified_name = original.__getstate__()
    loaded = torch._C._pickle_load_obj(custom_object_bytes(qualified_name, state))
    assert loaded._type().qualified_name() == qualified_name
    (w1, b1), (w2, b2) = (
        torch.ops.quantized.linear_unpack(original),
        torch.ops.quantized.linear_unpack(loaded),
    )
    assert torch.equal(w1.int_repr(), w2.int_repr())
    assert b1 is not None and b2 is not None and torch.equal(b1, b2)


def test_engines_are_swapped_and_everything_else_kept(tmp_path: Path) -> None:
    old = trt_fakes.engine_info("_run_on_acc_0_engine", b"old engine", {})
    trt_fakes.write_trt_archive(tmp_path / "engine.ep", {"_run_on_acc_0.engine": old}, {"note.txt": "kept"})
    (entry,) = read_engines(tmp_path / "engine.ep", "engine.ep")
    new = trt_fakes.engine_info("_run_on_acc_0_engine", b"refitted engine", {})
    repack(
        tmp_path / "engine.ep",
        tmp_path / "new.ep",
        {entry.record: custom_object_bytes(ENGINE_QUALIFIED_NAME, new)},
    )
    (again,) = read_engines(tmp_path / "new.ep", "new.ep")
    assert (again.fqn, again.record) == (entry.fqn, entry.record)
    assert again.engine_bytes() == b"refitted engine"
    assert again.info[7] == new[7]


def test_a_repacked_program_loads_and_runs_the_same(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).eval()
    x = torch.randn(2, 4)
    with quiet_torch():
        save_program(torch.export.export(model, (x,)), tmp_path / "p.ep")
    repack(tmp_path / "p.ep", tmp_path / "q.ep", {})
    assert torch.equal(
        run(load_program(tmp_path / "q.ep", "q"), [x])[0], run(load_program(tmp_path / "p.ep", "p"), [x])[0]
    )


def test_unknown_records_are_refused(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    with quiet_torch():
        save_program(torch.export.export(model, (torch.randn(1, 2),)), tmp_path / "p.ep")
    with pytest.raises(KeyError, match="custom_obj_9"):
        repack(tmp_path / "p.ep", tmp_path / "q.ep", {"data/constants/custom_obj_9": b""})
