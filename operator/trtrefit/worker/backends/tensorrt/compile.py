"""`trtrefit compile --backend tensorrt`: a refittable Torch-TensorRT program plus the refit record.

Needs a CUDA device and torch_tensorrt; imported only when that backend is asked for.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtrefit.worker import programs
from trtrefit.worker.backends.tensorrt.archive import RECORD_FILE
from trtrefit.worker.backends.tensorrt.plan import batchnorm_eps
from trtrefit.worker.backends.tensorrt.record import capture_weights, explain_engine, make_record

if TYPE_CHECKING:
    import torch
    from torch.export import ExportedProgram


def compile_tensorrt(source: ExportedProgram, inputs: list[torch.Tensor], path: Path) -> dict[str, Any]:
    """Compile `source` with `immutable_weights=False`, save it to `path` with the record inside."""
    import torch_tensorrt

    from trtrefit.worker.backends.tensorrt.backend import versions

    on_gpu = programs.to_device(source, "cuda")
    cuda_inputs = [t.cuda() for t in inputs]
    with capture_weights() as captured, programs.quiet_torch():
        compiled = torch_tensorrt.dynamo.compile(
            on_gpu, arg_inputs=cuda_inputs, immutable_weights=False, min_block_size=1
        )
    state = {name: t.detach().cpu() for name, t in programs.weights_of(source).items()}
    eps = batchnorm_eps(source)
    modules = [m for name, m in compiled.named_children() if "_run_on_acc" in name]
    engines = {}
    for index, module in enumerate(modules):
        weight_map = dict(getattr(module, "weight_name_map", None) or {})
        weight_map.pop("constant_mapping", None)
        store = _captured_for(captured, set(weight_map), index, len(modules))
        engine_name = f"{module.name}_engine" if getattr(module, "name", "") else "tensorrt_engine"
        engines[engine_name] = explain_engine(store, weight_map, state, eps)
    staging = path.with_name(f".{path.name}.staging.pt2")
    with programs.quiet_torch():
        torch_tensorrt.save(
            compiled,
            str(staging),
            arg_inputs=cuda_inputs,
            extra_files={RECORD_FILE: make_record(engines, state)},
        )
    staging.replace(path)
    kinds = Counter(entry["kind"] for record in engines.values() for entry in record.values())
    return {"versions": versions(), "engines": len(engines), "refitRecord": dict(kinds)}


def _captured_for(
    captured: list[dict[str, torch.Tensor]], names: set[str], index: int, count: int
) -> dict[str, torch.Tensor]:
    """The captured weights of one engine: the capture holding all its mapped names, else by build order."""
    holding = [store for store in captured if names and names <= set(store)]
    if len(holding) == 1:
        return holding[0]
    if len(captured) == count:
        return captured[index]
    raise RuntimeError(f"cannot tell which of {len(captured)} captured weight sets belongs to engine {index}")
