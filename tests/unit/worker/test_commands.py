"""The command wiring: cheap to import (the operator image has no torch), the result's two outlets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trtrefit.api.result import Outcome, RefitResult
from trtrefit.worker import commands

OPERATOR = Path(__file__).parents[3] / "operator"


def test_building_the_cli_imports_neither_torch_nor_fsspec() -> None:
    code = (
        "import sys, trtrefit.cli; trtrefit.cli.build_parser(); "
        "roots = ('torch', 'fsspec', 'safetensors', 's3fs'); "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in roots); "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    env = {**os.environ, "PYTHONPATH": str(OPERATOR)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_trtrefit_command_has_the_worker_subcommands() -> None:
    from trtrefit.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(
        [
            *["refit", "--engine", "e.ep", "--checkpoint", "c.safetensors", "--generate-inputs", "[]"],
            *[
                "--rtol",
                "0.01",
                "--atol",
                "0.01",
                "--min-cosine-similarity",
                "0.999",
                "--publish",
                "s3://b/p/",
            ],
        ]
    )
    assert args.func is commands.refit_command
    assert args.termination_log == "/dev/termination-log"
    assert parser.parse_args(["compile", "--model", "m:f", "--input-shape", "1,3", "--output", "o"]).func is (
        commands.compile_command
    )


def test_the_result_is_the_last_stdout_line_and_goes_to_an_explicit_termination_log(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    result = RefitResult(outcome=Outcome.ERROR, message="checkpoint c: missing key 'x'")
    commands.emit(result, str(tmp_path / "termination-log"))
    assert capsys.readouterr().out.splitlines()[-1] == result.to_json()
    assert (tmp_path / "termination-log").read_text() == result.to_json()


def test_no_termination_log_where_its_folder_is_missing(tmp_path: Path) -> None:
    commands.emit(RefitResult(outcome=Outcome.PASSED), str(tmp_path / "missing" / "log"))
    assert not (tmp_path / "missing").exists()


def test_the_default_termination_log_is_written_only_where_the_kubelet_made_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    absent = tmp_path / "dev" / "termination-log"
    (tmp_path / "dev").mkdir()
    monkeypatch.setattr(commands, "DEFAULT_TERMINATION_LOG", str(absent))
    commands.emit(RefitResult(outcome=Outcome.PASSED), str(absent))
    assert not absent.exists()
    absent.touch()
    commands.emit(RefitResult(outcome=Outcome.PASSED), str(absent))
    assert RefitResult.from_json(absent.read_text()).outcome is Outcome.PASSED
