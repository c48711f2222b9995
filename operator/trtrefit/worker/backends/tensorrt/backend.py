"""The `tensorrt` backend: a Torch-TensorRT program (TensorRT engines inside a torch.export archive).

Fast path, never re-lowering the model: for each engine, deserialize it with TensorRT, give EVERY weight
`Refitter.get_all_weights()` lists a value planned by `plan` (checkpoint tensors, BatchNorm algebra,
recorded or graph-derived constants such as eps), refit and serialize it; then repack the archive with the
new engines (`package`) and load that file once, so verification runs exactly what is published and
the old engines are never instantiated. TensorRT-RTX under-reports missing weights, so a weight we
cannot source stops the fast path instead of being left unset.

Fallback: `torch_tensorrt.dynamo.refit_module_weights` without its weight-map cache (whose BatchNorm eps
handling is wrong), recorded as the `fallback` path.

torch_tensorrt and tensorrt are imported only here, only when a TensorRT engine is refitted.
"""

from __future__ import annotations

import base64
import operator
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtrefit.api.jobspec import Device
from trtrefit.api.request import RefitPolicy
from trtrefit.api.result import RefitPath
from trtrefit.worker import programs
from trtrefit.worker.backends import BackendKind, Refitted, RefitWork
from trtrefit.worker.backends.tensorrt.archive import (
    ENGINE_IDX,
    ENGINE_QUALIFIED_NAME,
    NAME_IDX,
    RECORD_FILE,
    SERIALIZED_METADATA_IDX,
    EngineEntry,
    read_engines,
    read_record,
    read_weight_shapes,
)
from trtrefit.worker.backends.tensorrt.package import custom_object_bytes, repack
from trtrefit.worker.backends.tensorrt.plan import (
    EnginePlan,
    PlanMismatchError,
    batchnorm_eps,
    materialize,
    plan_engine,
)
from trtrefit.worker.backends.tensorrt.record import engine_record, schema_of
from trtrefit.worker.errors import WorkerError
from trtrefit.worker.formats import TensorSpec
from trtrefit.worker.progress import Progress

if TYPE_CHECKING:
    import torch
    from torch.export import ExportedProgram

_TRT_TO_TORCH = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "UINT8": "uint8",
}


class FastPathError(Exception):
    """The fast path cannot refit this program faithfully; the message says why."""


def tensorrt_module() -> Any:
    """`tensorrt` as torch_tensorrt sees it (its proxy resolves to TensorRT or TensorRT-RTX)."""
    import importlib

    importlib.import_module("torch_tensorrt")  # installs the `tensorrt` proxy module first
    return importlib.import_module("tensorrt")


def versions() -> dict[str, str]:
    import torch
    import torch_tensorrt

    found = {
        "torch": torch.__version__,
        "torch_tensorrt": str(torch_tensorrt.__version__),
        "tensorrt": str(getattr(tensorrt_module(), "__version__", "unknown")),
    }
    features = getattr(torch_tensorrt, "ENABLED_FEATURES", None)
    if getattr(features, "tensorrt_rtx", False):
        found["tensorrt"] += " (TensorRT-RTX)"
    if torch.cuda.is_available():
        found["gpu"] = torch.cuda.get_device_name()
    return found


class TensorRTBackend:
    name = BackendKind.TENSORRT

    def __init__(self, engine: Path, label: str, device: Device) -> None:
        self._path = engine
        self._label = label
        self._device = device
        self._engines = read_engines(engine, label)
        self._record = read_record(engine)
        self._torch_weights = read_weight_shapes(engine)
        self._program: ExportedProgram | None = None
        self._packed: Path | None = None

    def expected_weights(self, source: ExportedProgram | None) -> dict[str, TensorSpec] | None:
        schema = schema_of(self._record) if self._record else None
        if schema is not None:
            return schema
        if source is not None:
            return {name: TensorSpec.of(t) for name, t in programs.weights_of(source).items()}
        return None

    def versions(self) -> dict[str, str]:
        return versions()

    def refit(self, work: RefitWork, progress: Progress) -> Refitted:
        reason = "--refit-path fallback"
        if work.policy is not RefitPolicy.FALLBACK:
            try:
                engines = self._refit_engines(work, progress)
                self._install(engines, work, progress)
                return Refitted(RefitPath.FAST)
            except FastPathError as exc:
                reason = str(exc)
            except (RuntimeError, TypeError, ValueError, AttributeError) as exc:
                # TensorRT and its bindings differ between versions (TensorRT, TensorRT-RTX): an API the
                # fast path relies on failing here must cost speed, not the refit.
                reason = f"unexpected {type(exc).__name__} in the fast path: {' '.join(str(exc).split())}"
            if work.policy is RefitPolicy.FAST:
                raise WorkerError(f"engine {self._label}: no fast refit: {reason}")
        progress.say("refit", f"fast path not taken: {reason}; refitting with refit_module_weights")
        with progress.stage("refit.load"):
            program = self._load(self._path)
        with progress.stage("refit.fallback"):
            self._fallback(program, work)
        self._program = program
        return Refitted(RefitPath.FALLBACK, [f"fallback because {reason}"])

    def run(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if self._program is None:
            raise RuntimeError("run() before refit()")
        return programs.run(self._program, [t.to(self._device) for t in inputs])

    def save(self, path: Path) -> None:
        if self._packed is not None:
            self._packed.replace(path)
            self._packed = None
            return
        if self._program is None:
            raise RuntimeError("save() before refit()")
        import json

        extra = {RECORD_FILE: json.dumps(self._record, sort_keys=True)} if self._record else None
        programs.save_program(self._program, path, extra)

    def _load(self, path: Path) -> ExportedProgram:
        tensorrt_module()  # registers torch.classes.tensorrt.Engine, which loading instantiates
        return programs.load_program(path, f"engine {self._label}")

    # -- fast path ---------------------------------------------------------------------------------

    def _refit_engines(self, work: RefitWork, progress: Progress) -> dict[str, bytes]:
        """Refit every engine from its serialized bytes (the program is never loaded for this);
        returns each engine's new serialized bytes by its place in the program."""
        trt = tensorrt_module()
        _check_layout()
        for name, shape in self._torch_weights.items():
            value = work.checkpoint.state.get(name)
            if value is None or tuple(value.shape) != shape:
                raise FastPathError(f"the program's PyTorch-side weight '{name}' is not in the checkpoint")
        eps = batchnorm_eps(work.reference)
        specs = {name: TensorSpec.of(t) for name, t in work.checkpoint.state.items()}
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        return {
            entry.fqn: self._refit_engine(
                trt=trt,
                runtime=runtime,
                logger=logger,
                entry=entry,
                work=work,
                specs=specs,
                eps=eps,
                progress=progress,
            )
            for entry in self._engines
        }

    def _refit_engine(
        self,
        *,
        trt: Any,
        runtime: Any,
        logger: Any,
        entry: EngineEntry,
        work: RefitWork,
        specs: dict[str, TensorSpec],
        eps: dict[str, float],
        progress: Progress,
    ) -> bytes:
        with progress.stage("refit.deserialize"):
            engine = runtime.deserialize_cuda_engine(entry.engine_bytes())
        if engine is None:
            raise FastPathError(f"TensorRT could not deserialize {entry.name}")
        refitter = trt.Refitter(engine, logger)
        names = list(refitter.get_all_weights())
        record = engine_record(self._record, entry.name, set(names))
        plan = plan_engine(names, entry.weight_name_map(), record, specs, eps)
        if plan.unresolved:
            name, why = next(iter(plan.unresolved.items()))
            count = f"{len(plan.unresolved)} of {len(names)} weights of {entry.name}"
            raise FastPathError(f"{count} have no source, e.g. '{name}': {why}")
        with progress.stage("refit.set_weights"):
            keep = set_planned_weights(trt, refitter, names, plan, work.checkpoint.state)
            missing = list(refitter.get_missing_weights())
        if missing:
            raise FastPathError(f"TensorRT still misses {len(missing)} weights, e.g. '{missing[0]}'")
        with progress.stage("refit.engine"):
            if not refitter.refit_cuda_engine():
                raise FastPathError(f"refit_cuda_engine failed for {entry.name}")
        progress.say("refit", f"{entry.name}: set all {len(names)} weights, refitted")
        with progress.stage("refit.serialize"):
            blob = serialize_engine(trt, engine)
        del keep
        return blob

    def _install(self, engines: dict[str, bytes], work: RefitWork, progress: Progress) -> None:
        """Make the refitted program: repack the archive with the new engines and load that file (the
        only time engines are instantiated); if repacking fails, load the original and swap them in."""
        with progress.stage("refit.install"):
            if not self._torch_weights:
                try:
                    self._program = self._repacked(engines, work.workdir, progress)
                    return
                except (RuntimeError, ValueError, KeyError, OSError, WorkerError) as exc:
                    progress.say("refit", f"repacking the archive failed ({exc}); swapping engines in place")
            program = self._load(self._path)
            import torch

            for entry in self._engines:
                info: list[str | bytes] = list(entry.info)
                info[ENGINE_IDX] = engines[entry.fqn]
                program.constants[entry.fqn] = torch.classes.tensorrt.Engine(tuple(info))
            for name, tensor in _torch_side_weights(program, work).items():
                program.state_dict[name] = tensor
            self._program = program

    def _repacked(self, engines: dict[str, bytes], workdir: Path, progress: Progress) -> ExportedProgram:
        packed = workdir / "tensorrt-refitted.ep"
        with progress.stage("refit.install.repack"):
            replacements = {}
            for entry in self._engines:
                info = list(entry.info)
                info[ENGINE_IDX] = base64.b64encode(engines[entry.fqn]).decode()
                replacements[entry.record] = custom_object_bytes(ENGINE_QUALIFIED_NAME, info)
            repack(self._path, packed, replacements)
        with progress.stage("refit.install.load"):
            program = self._load(packed)
        self._packed = packed
        return program

    # -- fallback ----------------------------------------------------------------------------------

    def _fallback(self, program: ExportedProgram, work: RefitWork) -> None:
        from torch_tensorrt.dynamo import refit_module_weights

        new_weights = programs.to_device(work.reference, "cuda")
        with programs.quiet_torch():
            refitted = refit_module_weights(
                compiled_module=program,
                new_weight_module=new_weights,
                arg_inputs=tuple(t.cuda() for t in work.inputs),
                use_weight_map_cache=False,
                in_place=False,
                verify_output=False,
            )
        for entry in self._engines:
            try:
                program.constants[entry.fqn] = operator.attrgetter(entry.fqn)(refitted)
            except AttributeError as exc:
                why = f"refit_module_weights returned no '{entry.fqn}'"
                raise WorkerError(f"engine {self._label}: {why}") from exc
        for name, old in list(program.state_dict.items()):
            program.state_dict[name] = operator.attrgetter(name)(refitted).detach().to(old.device)


def set_planned_weights(
    trt: Any,
    refitter: Any,
    names: Sequence[str],
    plan: EnginePlan,
    state: Mapping[str, torch.Tensor],
    *,
    device: str = "cuda",
) -> list[torch.Tensor]:
    """Give each named engine weight its planned value (on the GPU, or host memory for device "cpu").
    Returns the tensors: TensorRT reads them at refit time, so they must outlive the refit."""
    prototypes = weight_prototypes(refitter, names)
    values = materialize_planned(prototypes, plan, state, device)
    set_weights(trt, refitter, prototypes, values, device)
    return list(values.values())


def weight_prototypes(refitter: Any, names: Sequence[str]) -> dict[str, tuple[Any, int]]:
    """TensorRT dtype and element count of each named engine weight (the only prototype fields that mean
    anything on TensorRT-RTX, whose prototype values are garbage)."""
    prototypes = {}
    for name in names:
        proto = refitter.get_weights_prototype(name)
        prototypes[name] = (proto.dtype, int(proto.size))
    return prototypes


def materialize_planned(
    prototypes: Mapping[str, tuple[Any, int]],
    plan: EnginePlan,
    state: Mapping[str, torch.Tensor],
    device: str = "cuda",
) -> dict[str, torch.Tensor]:
    """Each engine weight's planned value as the flat tensor TensorRT takes, ready on `device` (a live
    server computes these while the old weights still serve, then only `set_weights` under its lock)."""
    import torch

    values = {}
    for name, (trt_dtype, count) in prototypes.items():
        try:
            values[name] = materialize(
                plan.sources[name], state, count, _torch_dtype(trt_dtype, name), device
            )
        except PlanMismatchError as exc:
            raise FastPathError(f"'{name}': {exc}") from exc
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return values


def set_weights(
    trt: Any,
    refitter: Any,
    prototypes: Mapping[str, tuple[Any, int]],
    values: Mapping[str, torch.Tensor],
    device: str = "cuda",
) -> None:
    """Hand TensorRT the values (pointers only: they must stay alive until refit_cuda_engine returns)."""
    location = trt.TensorLocation.DEVICE if device.startswith("cuda") else trt.TensorLocation.HOST
    for name, value in values.items():
        weights = trt.Weights(prototypes[name][0], value.data_ptr(), value.numel())
        if not refitter.set_named_weights(name, weights, location):
            raise FastPathError(f"TensorRT rejected the new value of '{name}'")


def serialize_engine(trt: Any, engine: Any) -> bytes:
    """The engine with its weights, still refittable (INCLUDE_REFIT where this TensorRT has the flag)."""
    config = engine.create_serialization_config()
    config.clear_flag(trt.SerializationFlag.EXCLUDE_WEIGHTS)
    if hasattr(trt.SerializationFlag, "INCLUDE_REFIT"):
        config.set_flag(trt.SerializationFlag.INCLUDE_REFIT)
    return bytes(engine.serialize_with_config(config))


def _check_layout() -> None:
    """Our archive reader's indices must be the runtime's (torch.ops.tensorrt.*_IDX)."""
    import torch

    ops = torch.ops.tensorrt
    actual = (int(ops.NAME_IDX()), int(ops.ENGINE_IDX()), int(ops.SERIALIZED_METADATA_IDX()))
    if actual != (NAME_IDX, ENGINE_IDX, SERIALIZED_METADATA_IDX):
        raise FastPathError(f"this torch_tensorrt lays out engine info differently {actual}")


def _torch_side_weights(program: ExportedProgram, work: RefitWork) -> dict[str, torch.Tensor]:
    """New values for weights the program runs in PyTorch (ops left outside the engines)."""
    import torch

    new = {}
    for name, old in program.state_dict.items():
        value = work.checkpoint.state.get(name)
        if value is None or tuple(value.shape) != tuple(old.shape):
            raise FastPathError(f"the program's PyTorch-side weight '{name}' is not in the checkpoint")
        moved = value.detach().to(device=old.device, dtype=old.dtype)
        is_parameter = isinstance(old, torch.nn.Parameter)
        new[name] = torch.nn.Parameter(moved, requires_grad=False) if is_parameter else moved
    return new


def _torch_dtype(trt_dtype: Any, name: str) -> torch.dtype:
    import torch

    key = getattr(trt_dtype, "name", str(trt_dtype)).rsplit(".", 1)[-1]
    if key not in _TRT_TO_TORCH:
        raise FastPathError(f"'{name}' has TensorRT dtype {key}, which the fast path does not set")
    dtype: torch.dtype = getattr(torch, _TRT_TO_TORCH[key])
    return dtype
