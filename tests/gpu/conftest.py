"""GPU tests: a CUDA device and torch_tensorrt (TensorRT or TensorRT-RTX) are needed; everywhere else
they are skipped. Run on the lent H200 (../shared/gpu/README.md): `pytest -m gpu tests/gpu`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _missing() -> str | None:
    if importlib.util.find_spec("torch_tensorrt") is None:
        return "torch_tensorrt is not installed"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


def pytest_configure(config: pytest.Config) -> None:
    """The marker is registered in pyproject.toml too; on the device pytest runs with `-c /dev/null`."""
    config.addinivalue_line("markers", "gpu: needs an NVIDIA GPU with TensorRT; skipped where there is none")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _missing()
    here = Path(__file__).parent
    for item in items:
        if here not in item.path.parents:
            continue
        item.add_marker(pytest.mark.gpu)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
