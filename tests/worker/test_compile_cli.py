"""`trtrefit compile` and `trtrefit checkpoint` on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.worker.conftest import MODEL, Bundle
from trtrefit.worker.__main__ import main
from trtrefit.worker.backends import detect
from trtrefit.worker.storage import hash_file


def test_the_bundle_has_its_four_files_and_digests(bundle: Bundle) -> None:
    manifest = json.loads((bundle.dir / "manifest.json").read_text())
    assert manifest["backend"] == "exported"
    assert manifest["inputs"] == [{"shape": [4, 3, 32, 32], "dtype": "float32"}]
    for name in ("source.pt2", "engine.ep", "inputs.safetensors"):
        assert manifest["files"][name]["sha256"] == hash_file(bundle.dir / name)[0]
    assert detect(bundle.engine, "engine.ep") == "exported"
    assert list(load_file(str(bundle.inputs))) == ["input_0"]


def test_compile_from_a_program(capsys: pytest.CaptureFixture[str], bundle: Bundle, tmp_path: Path) -> None:
    code = main(
        ["compile", "--program", str(bundle.source), "--input-shape", "2,3,32,32", "--output", str(tmp_path)]
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out)["program"] == str(bundle.source)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "engine.ep",
        "inputs.safetensors",
        "manifest.json",
        "source.pt2",
    ]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--model", "no_such_module:f"], "cannot import no_such_module"),
        (["--model", "trtrefit.worker.samples"], "expected MODULE:FUNCTION"),
        (["--model", MODEL, "--dtype", "complex64"], "--dtype 'complex64'"),
    ],
)
def test_compile_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], error: str
) -> None:
    assert main(["compile", *args, "--input-shape", "1,3,32,32", "--output", str(tmp_path)]) == 1
    assert error in capsys.readouterr().err


def test_checkpoint_command(tmp_path: Path) -> None:
    assert (
        main(
            [
                "checkpoint",
                "--model",
                MODEL,
                "--seed",
                "3",
                "--perturb",
                "jitter",
                "--output",
                str(tmp_path / "c.safetensors"),
            ]
        )
        == 0
    )
    state = load_file(str(tmp_path / "c.safetensors"))
    assert state["8.weight"].shape == (10, 32)
    assert float(state["1.running_var"].min()) > 0
