"""The `operator` image's install steps, run for real without a Docker engine: the build context that
.dockerignore lets through, the Dockerfile's own `pip wheel` and `pip install` commands (paths moved into a
temp dir), then the installed command. It must run `trtrefit operator` and hold no torch."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from tests.chart.helmtool import REPO
from tests.chart.test_dockerfile import _ignored, _stages, _values


def _context(destination: Path) -> Path:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in tracked:
        if not _ignored(name, patterns) and (REPO / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, destination / name)
    return destination


def _run(command: str, cwd: Path, wheels: Path, version: str, python_bin: Path) -> None:
    """One RUN line of the Dockerfile: BuildKit flags dropped, /wheels and ${VERSION} resolved, pip from
    `python_bin`."""
    words = [w for w in shlex.split(command) if not w.startswith("--mount=")]
    words = [w.replace("/wheels", str(wheels)).replace("${VERSION}", version) for w in words]
    assert words[0] == "pip", command
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    result = subprocess.run(
        [str(python_bin), "-m", *words],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def test_operator_target_installs_a_torch_free_trtrefit(tmp_path: Path) -> None:
    stages = _stages()
    version = next(v for v in _values(stages["runtime"], "ARG") if v.startswith("VERSION=")).split("=", 1)[1]
    context, wheels, venv = _context(tmp_path / "context"), tmp_path / "wheels", tmp_path / "venv"

    (build,) = _values(stages["wheels-operator"], "RUN")
    _run(build, context, wheels, version, Path(sys.executable))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    (install,) = _values(stages["operator"], "RUN")
    _run(install, tmp_path, wheels, version, venv / "bin" / "python")

    shipped = {w.name.split("-")[0].lower() for w in wheels.glob("*.whl")}
    assert {"trtrefit", "kopf", "kubernetes", "pydantic"} <= shipped
    assert not {"torch", "torch_tensorrt", "tensorrt", "numpy"} & shipped
    result = subprocess.run(
        [str(venv / "bin" / "trtrefit"), "operator", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "--all-namespaces" in result.stdout
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import torch"], capture_output=True, timeout=60, check=False
    )
    assert probe.returncode != 0
