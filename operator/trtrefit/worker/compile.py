"""`trtrefit compile`: the starting bundle a TRTModel points at.

source.pt2          the torch.export program before compiling (the verification reference)
engine.ep           the refittable program: Torch-TensorRT on a GPU, else a lowered torch.export program
inputs.safetensors  sample inputs (input_0, ...) drawn with the seed
manifest.json       what was made from what, with digests and versions
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtrefit import __version__
from trtrefit.worker import programs
from trtrefit.worker.errors import WorkerError
from trtrefit.worker.inputs import FLOAT_DTYPES, INT_DTYPES, InputSpec, generate, save_inputs
from trtrefit.worker.storage import hash_file

if TYPE_CHECKING:
    import torch
    from torch.export import ExportedProgram

BUNDLE_FILES = ("source.pt2", "engine.ep", "inputs.safetensors")


@dataclass(frozen=True)
class CompileRequest:
    output: Path
    shapes: list[tuple[int, ...]]
    dtype: str = "float32"
    backend: str = "auto"
    seed: int = 0
    model: str | None = None
    program: Path | None = None


def choose_backend(requested: str) -> str:
    """`auto` picks tensorrt when a CUDA device and torch_tensorrt are both there, else exported."""
    import importlib.util

    import torch

    has_trt = importlib.util.find_spec("torch_tensorrt") is not None
    if requested == "tensorrt" and not (has_trt and torch.cuda.is_available()):
        raise WorkerError(
            "--backend tensorrt needs a CUDA device and torch_tensorrt (pip install 'trtrefit[tensorrt]')"
        )
    if requested == "auto":
        return "tensorrt" if has_trt and torch.cuda.is_available() else "exported"
    return requested


def compile_bundle(request: CompileRequest) -> str:
    """Write the bundle into `request.output` and return the manifest as JSON text."""
    if request.dtype not in FLOAT_DTYPES + INT_DTYPES:
        raise WorkerError(
            f"--dtype {request.dtype!r}: expected one of {', '.join(FLOAT_DTYPES + INT_DTYPES)}"
        )
    backend = choose_backend(request.backend)
    out = request.output
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    inputs = generate([InputSpec(shape, request.dtype) for shape in request.shapes], request.seed)
    started = time.perf_counter()
    source = _source_program(request, inputs, backend)
    timings["export"] = round(time.perf_counter() - started, 3)
    programs.save_program(source, out / "source.pt2")
    save_inputs(inputs, out / "inputs.safetensors")
    started = time.perf_counter()
    extra = _compile_engine(backend, source, inputs, out / "engine.ep")
    timings["compile"] = round(time.perf_counter() - started, 3)
    manifest = _manifest(request, backend, timings, extra)
    text = json.dumps(manifest, indent=2, sort_keys=True)
    (out / "manifest.json").write_text(text + "\n")
    return text


def _source_program(request: CompileRequest, inputs: list[torch.Tensor], backend: str) -> ExportedProgram:
    """The program to compile. For TensorRT the model is traced on the GPU, then stored with CPU weights:
    a CPU trace can record layouts only the CPU kernels produce (torchvision's attention reshapes the
    scaled_dot_product_attention output with a plain view that the CUDA kernels' strides do not allow),
    so the program would neither lower for TensorRT nor run as the CUDA reference."""
    import torch

    if request.program is not None:
        return programs.load_program(request.program, f"--program {request.program}")
    assert request.model is not None
    from trtrefit.worker.samples import build

    model = build(request.model, request.seed)
    if request.dtype in FLOAT_DTYPES:
        model = model.to(getattr(torch, request.dtype))
    device = "cuda" if backend == "tensorrt" else "cpu"
    try:
        with programs.quiet_torch():
            exported = torch.export.export(model.to(device), tuple(t.to(device) for t in inputs))
    except (RuntimeError, TypeError, ValueError) as exc:
        raise WorkerError.from_exc(f"--model {request.model}: torch.export failed", exc) from exc
    return programs.to_device(exported, "cpu")


def _compile_engine(
    backend: str, source: ExportedProgram, inputs: list[torch.Tensor], path: Path
) -> dict[str, Any]:
    if backend == "tensorrt":
        from trtrefit.worker.backends.tensorrt.compile import compile_tensorrt

        return compile_tensorrt(source, inputs, path)
    with programs.quiet_torch():
        lowered = source.run_decompositions()
    programs.save_program(lowered, path)
    return {}


def _manifest(
    request: CompileRequest, backend: str, timings: dict[str, float], extra: dict[str, Any]
) -> dict[str, Any]:
    import torch

    files = {}
    for name in BUNDLE_FILES:
        digest, size = hash_file(request.output / name)
        files[name] = {"sha256": digest, "size": size}
    return {
        "apiVersion": "trtrefit.dev/bundle-v1",
        "backend": backend,
        "model": request.model,
        "program": str(request.program) if request.program else None,
        "inputs": [{"shape": list(shape), "dtype": request.dtype} for shape in request.shapes],
        "seed": request.seed,
        "files": files,
        "timings": timings,
        "versions": {"trtrefit": __version__, "torch": torch.__version__, "python": platform.python_version()}
        | extra.get("versions", {}),
        **{k: v for k, v in extra.items() if k != "versions"},
    }
