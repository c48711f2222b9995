"""Verification inputs: parsed specs, deterministic generation, safetensors files in call order."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from trtrefit.api.request import RefitRequest
from trtrefit.cli import build_parser
from trtrefit.worker.commands import request_from_args
from trtrefit.worker.errors import WorkerError
from trtrefit.worker.inputs import InputSpec, generate, input_specs, load_inputs, parse_shape, save_inputs

REFIT_FLAGS = [
    *["refit", "--engine", "file:///e.ep", "--checkpoint", "file:///c.pt2", "--publish", "file:///p/"],
    *["--rtol", "0.01", "--atol", "0.01", "--min-cosine-similarity", "0.999"],
]


def request_with(generate: str) -> RefitRequest:
    return request_from_args(build_parser().parse_args([*REFIT_FLAGS, "--generate-inputs", generate]))


def test_generated_input_specs_come_from_the_request() -> None:
    request = request_with(
        '[{"shape": [8, 3, 224, 224], "dtype": "float32"}, {"shape": [8, 16], "dtype": "int64", "high": 30}]'
    )
    assert request.verify.generate is not None
    specs = input_specs(request.verify.generate)
    assert specs == [InputSpec((8, 3, 224, 224), "float32"), InputSpec((8, 16), "int64", 0, 30)]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("not json", "--generate-inputs: not JSON"),
        ("[]", "verify.generate: List should have at least 1 item"),
        ('[{"dtype": "float32"}]', "verify.generate.0.shape: Field required"),
        ('[{"shape": [1, 0]}]', "verify.generate.0.shape.1: Input should be greater than or equal to 1"),
        ('[{"shape": [1], "dtype": "complex64"}]', "verify.generate.0.dtype: Input should be"),
    ],
)
def test_bad_generated_inputs_name_the_field(text: str, error: str) -> None:
    with pytest.raises(WorkerError, match=re.escape(error)):
        request_with(text)


def test_an_empty_value_range_names_the_input() -> None:
    request = request_with('[{"shape": [1], "dtype": "int64", "low": 5, "high": 5}]')
    assert request.verify.generate is not None
    with pytest.raises(WorkerError, match=r"verify.generate\[0\]: need low < high"):
        input_specs(request.verify.generate)


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


def test_signature_specs_take_shapes_and_dtypes_from_the_program() -> None:
    from trtrefit.worker.inputs import signature_specs
    from trtrefit.worker.programs import quiet_torch

    class TwoInputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)

        def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            embedded: torch.Tensor = self.embed(ids)
            return x + embedded.sum(1)

    with quiet_torch():
        program = torch.export.export(TwoInputs(), (torch.randn(2, 4), torch.randint(0, 10, (2, 5))))
    specs = signature_specs(program)
    assert specs == [InputSpec((2, 4), "float32", 0, 10), InputSpec((2, 5), "int64", 0, 10)]
    tensors = generate(specs, 0)
    assert program.module()(*tensors).shape == (2, 4)  # the generated inputs are valid for the program
