"""Reading engines out of a Torch-TensorRT archive without torch_tensorrt, TensorRT or a GPU, and without
running anything an untrusted archive might ask for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.unit.worker import trt_fakes
from trtrefit.worker.backends import detect
from trtrefit.worker.backends.tensorrt.archive import RECORD_FILE, read_engines, read_record
from trtrefit.worker.errors import WorkerError
from trtrefit.worker.programs import quiet_torch, save_program

WEIGHT_MAP = {
    "[CONVOLUTION]-[aten_ops.convolution.default]-[0/convolution] KERNEL": ["0.weight", torch.float32]
}


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    path = tmp_path / "engine.ep"
    info = trt_fakes.engine_info("_run_on_acc_0_engine", b"\x00serialized\xffengine", WEIGHT_MAP)
    trt_fakes.write_trt_archive(
        path, {"_run_on_acc_0_engine": info}, {RECORD_FILE: json.dumps({"version": 1})}
    )
    return path


def test_engines_come_out_with_their_info(archive: Path) -> None:
    (entry,) = read_engines(archive, "s3://b/engine.ep")
    assert entry.fqn == "_run_on_acc_0_engine"
    assert entry.name == "_run_on_acc_0_engine"
    assert entry.record == "data/constants/custom_obj_0"
    assert entry.engine_bytes() == b"\x00serialized\xffengine"
    assert entry.weight_name_map() == {
        "[CONVOLUTION]-[aten_ops.convolution.default]-[0/convolution] KERNEL": ["0.weight", "float32"]
    }


def test_metadata_is_read_without_importing_or_calling_anything(archive: Path) -> None:
    (entry,) = read_engines(archive, "engine.ep")
    trt_fakes.BOOM.clear()
    metadata = entry.metadata
    assert trt_fakes.BOOM == []
    assert type(metadata["settings"]).__name__ == "Placeholder[tests.unit.worker.trt_fakes.Settings]"
    assert type(metadata["trap"]).__name__ == "Placeholder[tests.unit.worker.trt_fakes.boom]"


def test_the_record_travels_as_an_extra_file(archive: Path) -> None:
    assert read_record(archive) == {"version": 1}


def test_backend_detection(archive: Path, tmp_path: Path) -> None:
    assert detect(archive, "engine.ep") == "tensorrt"
    with quiet_torch():
        program = torch.export.export(torch.nn.Linear(2, 2), (torch.randn(1, 2),))
    save_program(program, tmp_path / "plain.ep")
    assert detect(tmp_path / "plain.ep", "plain.ep") == "exported"
    (tmp_path / "junk.ep").write_bytes(b"junk")
    with pytest.raises(WorkerError, match=r"^engine junk.ep: not a torch.export archive"):
        detect(tmp_path / "junk.ep", "junk.ep")


def test_a_program_without_engines_is_refused(tmp_path: Path) -> None:
    with quiet_torch():
        program = torch.export.export(torch.nn.Linear(2, 2), (torch.randn(1, 2),))
    save_program(program, tmp_path / "plain.ep")
    with pytest.raises(WorkerError, match=r"^engine plain.ep: the program holds no TensorRT engine$"):
        read_engines(tmp_path / "plain.ep", "plain.ep")
