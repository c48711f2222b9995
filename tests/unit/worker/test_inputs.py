"""Verification inputs: parsed specs, deterministic generation, safetensors files in call order."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from trtrefit.worker.errors import WorkerError
from trtrefit.worker.inputs import InputSpec, generate, load_inputs, parse_shape, parse_specs, save_inputs


def test_parse_specs() -> None:
    specs = parse_specs(
        '[{"shape": [8, 3, 224, 224], "dtype": "float32"}, {"shape": [8, 16], "dtype": "int64", "high": 30}]'
    )
    assert specs == [InputSpec((8, 3, 224, 224), "float32"), InputSpec((8, 16), "int64", 0, 30)]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("not json", "not JSON"),
        ("[]", "non-empty list"),
        ('[{"dtype": "float32"}]', r"\[0\]: expected an object with a 'shape'"),
        ('[{"shape": [1, 0]}]', "positive integers"),
        ('[{"shape": [1], "dtype": "complex64"}]', "dtype 'complex64' is not one of"),
        ('[{"shape": [1], "typo": 1}]', "unknown field"),
        ('[{"shape": [1], "dtype": "int64", "low": 5, "high": 5}]', "low < high"),
    ],
)
def test_bad_specs_name_the_option(text: str, error: str) -> None:
    with pytest.raises(WorkerError, match=f"^--generate-inputs.*{error}"):
        parse_specs(text)


def test_generation_is_deterministic_per_seed() -> None:
    specs = [InputSpec((2, 3)), InputSpec((4,), "int32", 0, 7)]
    first, again, other = generate(specs, 1), generate(specs, 1), generate(specs, 2)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    assert first[1].dtype == torch.int32
    assert int(first[1].min()) >= 0 and int(first[1].max()) < 7


def test_parse_shape() -> None:
    assert parse_shape("1,3,32,32") == (1, 3, 32, 32)
    with pytest.raises(WorkerError, match="--input-shape '1,a'"):
        parse_shape("1,a")


def test_round_trip_keeps_call_order(tmp_path: Path) -> None:
    tensors = [torch.randn(2) for _ in range(12)]
    save_inputs(tensors, tmp_path / "in.safetensors")
    loaded = load_inputs(tmp_path / "in.safetensors", "in.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(tensors, loaded, strict=True))


def test_keys_must_carry_their_position(tmp_path: Path) -> None:
    save_file({"x": torch.ones(1)}, str(tmp_path / "in.safetensors"))
    with pytest.raises(
        WorkerError, match=r"^inputs s3://b/in.safetensors: key 'x' does not end with its position"
    ):
        load_inputs(tmp_path / "in.safetensors", "s3://b/in.safetensors")
    save_file({"input_0": torch.ones(1), "input_2": torch.ones(1)}, str(tmp_path / "gap.safetensors"))
    with pytest.raises(WorkerError, match=r"positions \[0, 2\] are not 0..1"):
        load_inputs(tmp_path / "gap.safetensors", "gap")
