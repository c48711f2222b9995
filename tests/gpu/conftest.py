"""GPU tests: a CUDA device and torch_tensorrt (TensorRT or TensorRT-RTX) are needed; everywhere else
they are skipped. Run on the lent H200 (../shared/gpu/README.md; the command is in bench/README.md,
"GPU tests"): `pytest -m gpu tests/gpu`."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

JUNIT_NAME = "gpu_tests.junit.xml"


def _missing() -> str | None:
    if importlib.util.find_spec("torch_tensorrt") is None:
        return "torch_tensorrt is not installed"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """The marker is registered in pyproject.toml too; on the device pytest runs with `-c /dev/null`.

    On the device (the recipe runs pytest with tests/gpu on its command line and $OUT set) the run also
    writes its junit XML to $OUT/gpu_tests.junit.xml, to be committed beside the results: this conftest
    is then loaded before pytest's junitxml plugin configures, so setting the path here takes effect.
    Anywhere else, or when --junitxml is given, nothing changes."""
    config.addinivalue_line("markers", "gpu: needs an NVIDIA GPU with TensorRT; skipped where there is none")
    out = os.environ.get("OUT")
    if out and not config.option.xmlpath and Path(out).is_dir():
        config.option.xmlpath = str(Path(out) / JUNIT_NAME)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _missing()
    here = Path(__file__).parent
    for item in items:
        if here not in item.path.parents:
            continue
        item.add_marker(pytest.mark.gpu)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
