"""Checkpoint formats and the pre-flight check, with one-line errors naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from trtrefit.worker.errors import WorkerError
from trtrefit.worker.formats import TensorSpec, check_compatible, detect_format, load_checkpoint
from trtrefit.worker.programs import quiet_torch, save_program

STATE = {"fc.weight": torch.ones(3, 2), "fc.bias": torch.zeros(3), "bn.num_batches_tracked": torch.tensor(0)}
EXPECTED = {name: TensorSpec.of(t) for name, t in STATE.items()}


class TestLoad:
    def test_safetensors(self, tmp_path: Path) -> None:
        save_file(STATE, str(tmp_path / "c.safetensors"))
        loaded = load_checkpoint(tmp_path / "c.safetensors", "s3://b/c.safetensors")
        assert loaded.format == "safetensors"
        assert loaded.program is None
        assert set(loaded.state) == set(STATE)

    def test_weights_only_pickle_and_a_nested_state_dict(self, tmp_path: Path) -> None:
        torch.save({"epoch": 3, "state_dict": STATE}, tmp_path / "c.pt")
        loaded = load_checkpoint(tmp_path / "c.pt", "c.pt")
        assert loaded.format == "pickle"
        assert torch.equal(loaded.state["fc.weight"], STATE["fc.weight"])

    def test_pickle_with_arbitrary_objects_is_refused(self, tmp_path: Path) -> None:
        torch.save({"fc.weight": torch.ones(1), "hook": Path("/")}, tmp_path / "c.pt")
        with pytest.raises(
            WorkerError, match=r"^checkpoint c.pt: not loadable with torch.load\(weights_only=True\)"
        ):
            load_checkpoint(tmp_path / "c.pt", "c.pt")

    def test_pickle_that_is_not_a_state_dict(self, tmp_path: Path) -> None:
        torch.save([torch.ones(1)], tmp_path / "c.pt")
        with pytest.raises(WorkerError, match=r"^checkpoint c.pt: not a state_dict"):
            load_checkpoint(tmp_path / "c.pt", "c.pt")

    def test_exported_program(self, tmp_path: Path) -> None:
        with quiet_torch():
            program = torch.export.export(torch.nn.Linear(2, 3), (torch.randn(1, 2),))
        save_program(program, tmp_path / "c.pt2")
        loaded = load_checkpoint(tmp_path / "c.pt2", "c.pt2")
        assert loaded.format == "program"
        assert loaded.program is not None
        assert set(loaded.state) == {"weight", "bias"}

    def test_garbage_with_a_known_suffix(self, tmp_path: Path) -> None:
        (tmp_path / "c.safetensors").write_bytes(b"not really")
        with pytest.raises(
            WorkerError, match=r"^checkpoint http://h/c.safetensors: not a readable safetensors file"
        ):
            load_checkpoint(tmp_path / "c.safetensors", "http://h/c.safetensors")

    def test_format_from_content_when_the_name_does_not_say(self, tmp_path: Path) -> None:
        save_file(STATE, str(tmp_path / "blob"))
        assert detect_format(tmp_path / "blob", "s3://b/blob?versionId=3") == "safetensors"
        (tmp_path / "junk").write_bytes(b"\x00" * 32)
        with pytest.raises(WorkerError, match="unknown format"):
            detect_format(tmp_path / "junk", "junk")


class TestCompatible:
    def test_a_matching_checkpoint_passes(self) -> None:
        check_compatible(EXPECTED, STATE, "checkpoint c")

    def test_every_problem_is_listed_by_name_in_one_line(self) -> None:
        state = {
            "fc.weight": torch.ones(3, 4),
            "fc.bias": torch.zeros(3, dtype=torch.float16),
            "extra.weight": torch.ones(1),
            "more": torch.ones(1),
        }
        with pytest.raises(WorkerError) as caught:
            check_compatible(EXPECTED, state, "checkpoint s3://b/k.safetensors")
        assert caught.value.message == (
            "checkpoint s3://b/k.safetensors: missing key 'bn.num_batches_tracked'; "
            "unexpected 2 keys 'extra.weight', 'more'; "
            "key 'fc.bias' dtype float16 does not match engine float32; "
            "key 'fc.weight' shape [3, 4] does not match engine [3, 2]"
        )
        assert "\n" not in caught.value.message
