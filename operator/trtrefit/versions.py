"""`trtrefit version`: what must match between the compile, worker and serving images (why: see
docs/compatibility.md). Each field is what this process would load, or null when it is not installed."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import platform
import sys
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from trtrefit import __version__

# Torch-TensorRT and TensorRT come as several distributions (CUDA 12/13 builds, TensorRT-RTX).
_TORCH_TENSORRT = ("torch-tensorrt", "torch-tensorrt-rtx", "torch_tensorrt")
_TENSORRT = ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-rtx", "tensorrt_rtx")


class Versions(BaseModel):
    """The versions one image carries; two images can exchange artifacts when the fields marked in
    docs/compatibility.md agree."""

    model_config = ConfigDict(frozen=True)

    trtrefit: str = Field(description="This package.")
    python: str = Field(description="Interpreter version.")
    platform: str = Field(description="OS and CPU architecture, e.g. Linux-x86_64.")
    torch: str | None = Field(description="PyTorch; exported programs are tied to it.")
    torch_tensorrt: str | None = Field(description="Torch-TensorRT; its runtime reads the saved engines.")
    tensorrt: str | None = Field(description="TensorRT (or TensorRT-RTX); engines are tied to it.")
    cuda: str | None = Field(description="CUDA version torch was built with.")
    gpu: str | None = Field(description="Name of GPU 0, when one is visible.")
    gpu_arch: str | None = Field(description="Its compute capability, e.g. sm_90; engines are tied to it.")


def _distribution(names: tuple[str, ...]) -> str | None:
    for name in names:
        try:
            return f"{importlib.metadata.version(name)}" + (f" ({name})" if name != names[0] else "")
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def collect() -> Versions:
    """Read the versions without building anything; imports torch (seconds) when it is installed."""
    torch_version = cuda = gpu = arch = None
    try:
        torch: Any = importlib.import_module("torch")
    except ImportError:
        torch = None  # the worker extra is not installed (the operator image)
    if torch is not None:
        torch_version = str(torch.__version__)
        cuda = torch.version.cuda
        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
            major, minor = torch.cuda.get_device_capability(0)
            arch = f"sm_{major}{minor}"
    return Versions(
        trtrefit=__version__,
        python=platform.python_version(),
        platform=f"{platform.system()}-{platform.machine()}",
        torch=torch_version,
        torch_tensorrt=_distribution(_TORCH_TENSORRT),
        tensorrt=_distribution(_TENSORRT),
        cuda=cuda,
        gpu=gpu,
        gpu_arch=arch,
    )


def render(versions: Versions) -> str:
    rows = versions.model_dump()
    width = max(len(key) for key in rows)
    return "\n".join(f"{key:<{width}}  {value if value is not None else '-'}" for key, value in rows.items())


def add_version_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "version",
        help="print the versions that must match between the compile, worker and serving images",
        description="trtrefit, Python, torch, Torch-TensorRT, TensorRT, CUDA and the GPU this image "
        "would use ('-' = not installed / none visible). Run it in each image: an engine compiled with "
        "one TensorRT and GPU architecture does not load under another, an exported program needs the "
        "torch that saved it. docs/compatibility.md says which fields must agree and why.",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    parser.set_defaults(func=version_command)


def version_command(args: argparse.Namespace) -> int:
    versions = collect()
    print(versions.model_dump_json() if args.json else render(versions), file=sys.stdout, flush=True)
    return 0
