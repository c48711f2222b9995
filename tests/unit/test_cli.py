"""The CLI as documentation: every subcommand's --help lists its options with their defaults, refit explains
its tolerances and URI schemes; a missing extra is one line naming it (imports blocked for real in a
subprocess by a sitecustomize); `trtrefit version` reports what this environment would load."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from trtrefit import __version__
from trtrefit.cli import build_parser
from trtrefit.versions import Versions

OPERATOR = Path(__file__).parents[2] / "operator"
SUBCOMMANDS = ("compile", "refit", "checkpoint", "operator", "serve", "crd", "version")

# Makes `import NAME` fail as if NAME were not installed, for each NAME in $BLOCKED_MODULES.
SITECUSTOMIZE = """
import os, sys
from importlib.abc import MetaPathFinder

BLOCKED = set(filter(None, os.environ.get("BLOCKED_MODULES", "").split(",")))

class Blocker(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Blocker())
"""


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _option_blocks(text: str) -> dict[str, str]:
    """Each option's help block, keyed by its long option string."""
    blocks: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        stripped = line.strip()
        if line.startswith("  -") and stripped.startswith("-"):
            names = [part.split()[0] for part in stripped.split(", ")]
            current = next((n for n in names if n.startswith("--")), names[0])
            blocks[current] = line
        elif current is not None and line.startswith("        "):
            blocks[current] += " " + stripped
        else:
            current = None
    return blocks


def test_the_cli_has_every_subcommand() -> None:
    assert set(_subparsers()) == set(SUBCOMMANDS)


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_lists_every_option_and_its_default(command: str) -> None:
    parser = _subparsers()[command]
    blocks = _option_blocks(parser.format_help())
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        name = next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])
        assert name in blocks, f"{command} --help does not list {name}"
        block = " ".join(blocks[name].split())
        assert action.help, f"{command} {name} has no help text"
        if action.default not in (None, False, argparse.SUPPRESS):
            assert "default" in block.lower(), f"{command} {name}: no default in {block!r}"
            if isinstance(action.default, int | float | str) and name != "--log-format":
                assert str(action.default) in block or f"{action.default:g}" in block, block


def _run(*args: str, blocked: str = "", tmp_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    path = [str(OPERATOR)]
    if blocked:
        assert tmp_path is not None
        (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
        path.insert(0, str(tmp_path))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "BLOCKED_MODULES": blocked}
    return subprocess.run(
        [sys.executable, "-m", "trtrefit.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )


def test_refit_help_explains_tolerances_and_uri_schemes() -> None:
    done = _run("refit", "--help")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "|actual - reference| <= atol + rtol * |reference|" in text
    assert (
        "--min-cosine-similarity" in text and "TRTModel defaults: rtol 0.01, atol 0.01, cosine 0.999" in text
    )
    for scheme in ("file://", "http://", "s3://", "gs://"):
        assert scheme in text
    assert "pip install 'trtrefit[gcs]'" in text


@pytest.mark.parametrize(
    ("blocked", "args", "line"),
    [
        (
            "torch",
            ["compile", "--model", "m:f", "--input-shape", "1,4", "--output", "out"],
            "trtrefit compile needs torch, which is not installed: pip install 'trtrefit[worker]'",
        ),
        (
            "fastapi",
            ["serve", "--model-name", "m", "--request", "@REQUEST"],
            "trtrefit serve needs fastapi, which is not installed: pip install 'trtrefit[worker,serve]'",
        ),
    ],
)
def test_a_missing_extra_is_one_line_naming_it(
    blocked: str, args: list[str], line: str, tmp_path: Path
) -> None:
    request = tmp_path / "request.json"
    request.write_text(
        json.dumps(
            {
                "engine": {"uri": "file:///nowhere/engine.ep"},
                "checkpoint": {"uri": "file:///nowhere/ckpt.safetensors"},
                "publish": {"uri": "file:///nowhere/out/"},
            }
        )
    )
    args = [a.replace("@REQUEST", f"@{request}") for a in args]
    done = _run(*args, blocked=blocked, tmp_path=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == line, done.stderr


def test_refit_without_torch_ends_in_one_line_and_a_result(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    # Real artifacts, so the refit gets past fetching and checking them to where it needs torch.
    engine, checkpoint = tmp_path / "engine.ep", tmp_path / "ckpt.safetensors"
    model = torch.nn.Linear(2, 2)
    torch.export.save(torch.export.export(model, (torch.randn(1, 2),)), engine)
    save_file(model.state_dict(), str(checkpoint))
    done = _run(
        *(
            "refit",
            "--engine",
            str(engine),
            "--checkpoint",
            str(checkpoint),
            "--publish",
            str(tmp_path / "out"),
        ),
        *("--termination-log", str(tmp_path / "termination-log")),
        blocked="torch",
        tmp_path=tmp_path,
    )
    line = "trtrefit refit needs torch, which is not installed: pip install 'trtrefit[worker]'"
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == f"[error] {line}", done.stderr
    assert "Traceback" not in done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["outcome"], result["message"]) == ("error", line)
    assert json.loads((tmp_path / "termination-log").read_text())["message"] == line


def test_version_json_reports_this_environment() -> None:
    import torch

    done = _run("version", "--json")
    assert done.returncode == 0, done.stderr
    versions = Versions.model_validate_json(done.stdout)
    assert versions.trtrefit == __version__
    assert versions.python == platform.python_version()
    assert versions.torch == torch.__version__
    assert versions.cuda == torch.version.cuda
    if not torch.cuda.is_available():
        assert versions.gpu is None and versions.gpu_arch is None


def test_version_without_torch_still_answers(tmp_path: Path) -> None:
    done = _run("version", blocked="torch,torch_tensorrt", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = dict(line.split(None, 1) for line in done.stdout.splitlines())
    assert set(rows) == set(Versions.model_fields)
    assert rows["torch"] == "-" and rows["trtrefit"] == __version__
