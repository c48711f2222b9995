"""The live program of the `tensorrt` backend: a Torch-TensorRT program whose engines stay refittable while
they serve.

`torch_tensorrt.load` holds each engine as a `torch.classes.tensorrt.Engine` constant, which has no refit
API. So every `torch.ops.tensorrt.execute_engine` call in the loaded graph is replaced by a module running
a `PythonTorchTensorRTModule` built from the same engine bytes: per engine one ICudaEngine, its execution
context and ONE `tensorrt.Refitter`, kept for the life of the process. A Refitter's first
`refit_cuda_engine` is seconds of work inside TensorRT (the priming refit); every later one on the same
Refitter takes milliseconds, and the serving context computes with the new weights at once.

Weights the program runs in PyTorch (ops between engines of a partitioned program) are rebound in place;
the loaded module names them under their partition (`_run_on_gpu_3.W` for the checkpoint's `W`).

`stage` does everything slow (check, plan with the worker's `trt_plan`, materialize every engine weight
on the GPU) on the low-priority refit stream; `apply` only hands TensorRT pointers and refits. Inference,
the engines included, runs on the stream `run_on` gives: the high-priority serving stream for the copy
that serves, the low-priority standby stream for the copy that takes the refit (serving/standby.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trtrefit.serving import streams
from trtrefit.worker import programs
from trtrefit.worker.backends.tensorrt.archive import (
    EngineEntry,
    read_engines,
    read_record,
    read_weight_shapes,
)
from trtrefit.worker.backends.tensorrt.backend import (
    FastPathError,
    materialize_planned,
    set_weights,
    tensorrt_module,
    weight_prototypes,
)
from trtrefit.worker.backends.tensorrt.plan import batchnorm_eps, plan_engine
from trtrefit.worker.backends.tensorrt.record import engine_record, schema_of
from trtrefit.worker.errors import WorkerError
from trtrefit.worker.formats import TensorSpec, check_compatible

if TYPE_CHECKING:
    from torch.export import ExportedProgram

# Torch-TensorRT's name for a partition it leaves to PyTorch; its weights keep their own name beneath it.
_TORCH_PARTITION = re.compile(r"^_run_on_gpu_\d+\.")


@dataclass(frozen=True, eq=False)
class TensorRTStaged:
    """Weights ready for `TensorRTLive.apply`: per engine, every weight's flat value on the GPU (None: the
    weights the engines were compiled with), and the PyTorch-side tensors by their name in the program."""

    owner: int
    engines: tuple[dict[str, torch.Tensor], ...] | None
    torch_side: dict[str, torch.Tensor]


@dataclass
class _Engine:
    entry: EngineEntry
    slot: str  # the submodule of the program that runs it
    module: Any  # PythonTorchTensorRTModule
    refitter: Any
    names: list[str]
    prototypes: dict[str, tuple[Any, int]]
    primed: bool = False


class LiveRefitError(RuntimeError):
    """Setting the weights or refitting failed; the message says whether the previous weights are back."""


class TensorRTLive:
    """A loaded Torch-TensorRT program whose engines are refitted live; see serving/live.py for the order
    in which the server calls it."""

    backend = "tensorrt"

    def __init__(
        self,
        engine_path: Path,
        label: str,
        source: ExportedProgram | None,
        device: str,
        *,
        put_back: bool = True,
    ) -> None:
        """With `put_back`, the copy keeps what it was last refitted from (one more copy of the weights on
        the GPU) so a failed `apply` can restore it; without, a failed `apply` leaves the copy refusing to
        run until an `apply` passes. The server's standby pair needs no put-back: a standby that failed is
        never promoted, and its next refit sets every weight."""
        if not device.startswith("cuda") or not torch.cuda.is_available():
            raise WorkerError(f"engine {label}: a TensorRT program needs a CUDA device (got {device!r})")
        self.device = device
        self._label = label
        self._stream = streams.serving_stream(device)
        self._trt = tensorrt_module()
        from torch_tensorrt.logging import TRT_LOGGER

        self._logger = TRT_LOGGER  # TensorRT keeps one logger per process: the runtime's, which this is
        self._entries = read_engines(engine_path, label)
        self._record = read_record(engine_path)
        self._expected = _expected_weights(self._record, source, label)
        self._eps = batchnorm_eps(source) if source is not None else {}
        program = programs.load_program(engine_path, f"engine {label}")
        with programs.quiet_torch():
            self._module = program.module()
        del program  # its Engine constants hold a second copy of every engine on the GPU
        self._engines = self._swap_engines()
        self._torch_names = self._torch_side_names(read_weight_shapes(engine_path))
        self._refitted = False  # whether any engine holds weights other than those compiled in
        self._put_back = put_back
        self._current: TensorRTStaged | None = (
            TensorRTStaged(id(self), None, self._torch_side_tensors()) if put_back else None
        )
        self._broken: str | None = None  # why the copy refuses to run: an apply failed without a put-back

    # -- LiveProgram --------------------------------------------------------------------------------

    def expected_weights(self) -> dict[str, TensorSpec]:
        return dict(self._expected)

    def stage(self, state: Mapping[str, torch.Tensor]) -> TensorRTStaged:
        """Check, plan and materialize on the GPU; nothing that serves is touched."""
        check_compatible(self._expected, state, "checkpoint")
        specs = {name: TensorSpec.of(t) for name, t in state.items()}
        engines = []
        for engine in self._engines:
            record = engine_record(self._record, engine.entry.name, set(engine.names))
            plan = plan_engine(engine.names, engine.entry.weight_name_map(), record, specs, self._eps)
            if plan.unresolved:
                name, why = next(iter(plan.unresolved.items()))
                count = f"{len(plan.unresolved)} of {len(engine.names)} weights of {engine.entry.name}"
                raise WorkerError(f"engine {self._label}: {count} have no source, e.g. '{name}': {why}")
            try:
                with streams.refit_work(self.device):  # below the serving stream's priority
                    engines.append(materialize_planned(engine.prototypes, plan, state, self.device))
            except FastPathError as exc:
                raise WorkerError(f"engine {self._label}: {engine.entry.name}: {exc}") from exc
        with streams.refit_work(self.device):
            torch_side = self._stage_torch_side(state)
        return TensorRTStaged(id(self), tuple(engines), torch_side)

    def current(self) -> TensorRTStaged:
        if self._current is None:
            raise RuntimeError(f"engine {self._label}: this copy keeps no previous weights (put_back=False)")
        return self._current

    def apply(self, staged: Any) -> None:
        """Set every engine weight and refit each engine once, then rebind the PyTorch-side weights. On
        failure the weights serving before are put back (or nothing was changed) and LiveRefitError (a
        RuntimeError, as the server expects of a failing run) is raised."""
        if not isinstance(staged, TensorRTStaged) or staged.owner != id(self):
            raise TypeError("apply() takes what this program's stage() or current() returned")
        torch.cuda.synchronize()  # inference already queued computes with the weights it started with
        previous = self._current
        try:
            self._apply_engines(staged)
        except (FastPathError, WorkerError, RuntimeError, TypeError, ValueError) as exc:
            message = f"engine {self._label}: refit failed: {' '.join(str(exc).split())}"
            if previous is None:
                self._broken = message
                raise LiveRefitError(
                    f"{message}; the copy that took it keeps no previous weights and runs again only after "
                    "a refit passes"
                ) from exc
            if self._refitted and previous is not staged:
                try:
                    self._apply_engines(previous)
                except (FastPathError, WorkerError, RuntimeError, TypeError, ValueError) as again:
                    raise LiveRefitError(
                        f"{message}; putting the previous weights back failed too: {again}"
                    ) from exc
                message += "; the previous weights are back"
            raise LiveRefitError(message) from exc
        self._rebind(staged.torch_side)
        self._current = staged if self._put_back else None
        self._broken = None

    def infer(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Runs on the stream `run_on` set (the serving stream until then)."""
        from torch.utils import _pytree

        if self._broken is not None:
            raise LiveRefitError(
                f"{self._broken}; the copy that took it runs again only after a refit passes"
            )

        def run() -> list[torch.Tensor]:
            result = self._module(*(t.to(self.device) for t in inputs))
            return [leaf for leaf in _pytree.tree_leaves(result) if isinstance(leaf, torch.Tensor)]

        with torch.inference_mode():
            return streams.run_on_stream(self._stream, run)

    def run_on(self, stream: torch.cuda.Stream) -> None:
        """Run inference and every engine on `stream`. Nothing may be running on this copy."""
        self._stream = stream
        for engine in self._engines:
            engine.module._engine_stream = stream

    # -- what the bench and the tests look at ---------------------------------------------------------

    @property
    def engine_count(self) -> int:
        return len(self._engines)

    @property
    def torch_side_names(self) -> dict[str, str]:
        """Name in the loaded program -> name in the checkpoint, for weights PyTorch runs."""
        return dict(self._torch_names)

    @property
    def primed(self) -> bool:
        """Whether every Refitter has done its first (slow) refit."""
        return all(engine.primed for engine in self._engines)

    # -- internals ----------------------------------------------------------------------------------

    def _apply_engines(self, staged: TensorRTStaged) -> None:
        if staged.engines is None:
            if self._refitted:
                self._rebuild()  # the compiled-in weights cannot be read back: deserialize them again
            return
        for engine, values in zip(self._engines, staged.engines, strict=True):
            self._refitted = True
            set_weights(self._trt, engine.refitter, engine.prototypes, values, self.device)
            if not engine.primed:
                # TensorRT-RTX under-reports missing weights; every name the Refitter lists is set above,
                # this only guards the first refit against a TensorRT that lists fewer than it needs.
                missing = list(engine.refitter.get_missing_weights())
                if missing:
                    raise WorkerError(f"{engine.entry.name}: TensorRT still misses '{missing[0]}'")
            if not self._refit(engine.refitter):
                raise WorkerError(f"refit_cuda_engine failed for {engine.entry.name}")
            engine.primed = True

    def _refit(self, refitter: Any) -> bool:
        """Refit on this copy's stream (the standby's: low priority), finished when this returns;
        TensorRT's synchronous call would queue its kernels on the default stream, at default priority."""
        refit_async = getattr(refitter, "refit_cuda_engine_async", None)
        if refit_async is None:
            return bool(refitter.refit_cuda_engine())
        done = bool(refit_async(self._stream.cuda_stream))
        self._stream.synchronize()
        return done

    def _swap_engines(self) -> list[_Engine]:
        """Replace each execute_engine call by a live engine module; returns them in graph order."""
        graph = self._module.graph
        by_slot = {entry.fqn: entry for entry in self._entries} | {e.name: e for e in self._entries}
        engines: list[_Engine] = []
        for node in list(graph.nodes):
            if node.op != "call_function" or node.target is not torch.ops.tensorrt.execute_engine.default:
                continue
            inputs, engine_node = node.args[0], node.args[1]
            target = str(getattr(engine_node, "target", ""))
            entry = by_slot.get(target)
            if entry is None:
                known = ", ".join(sorted(by_slot))
                raise WorkerError(
                    f"engine {self._label}: graph node {node.name} runs '{target}', which is none of the "
                    f"archive's engines ({known})"
                )
            engine = self._build(entry, f"_trtrefit_live_{len(engines)}")
            self._module.add_submodule(engine.slot, _EngineCall(engine.module))
            with graph.inserting_before(node):
                call = graph.call_module(engine.slot, (inputs,))
            node.replace_all_uses_with(call)
            graph.erase_node(node)
            if not engine_node.users:
                graph.erase_node(engine_node)
                _drop_attr(self._module, str(engine_node.target))
            engines.append(engine)
        if not engines:
            raise WorkerError(f"engine {self._label}: the program's graph calls no TensorRT engine")
        self._module.recompile()
        return engines

    def _build(self, entry: EngineEntry, slot: str) -> _Engine:
        from torch_tensorrt.dynamo.runtime import PythonTorchTensorRTModule

        ops = torch.ops.tensorrt
        info = entry.info
        delim = str(ops.SERIALIZED_ENGINE_BINDING_DELIM())[0]
        inputs = info[int(ops.INPUT_BINDING_NAMES_IDX())].split(delim)
        outputs = info[int(ops.OUTPUT_BINDING_NAMES_IDX())].split(delim)
        allocator_idx = int(ops.REQUIRES_OUTPUT_ALLOCATOR_IDX())
        with torch.cuda.device(torch.device(self.device)):
            module = PythonTorchTensorRTModule(
                entry.engine_bytes(),
                [n for n in inputs if n],
                [n for n in outputs if n],
                name=entry.name,
                requires_output_allocator=len(info) > allocator_idx and info[allocator_idx] == "1",
            )
        if module.engine is None:
            raise WorkerError(f"engine {self._label}: TensorRT could not deserialize {entry.name}")
        # PythonTorchTensorRTModule runs the engine on a stream it creates itself (default priority) unless
        # this is already set to a stream other than the default one: this copy's stream.
        module._engine_stream = self._stream
        refitter = self._trt.Refitter(module.engine, self._logger)
        names = list(refitter.get_all_weights())
        if not names:
            raise WorkerError(f"engine {self._label}: {entry.name} was not built refittable")
        return _Engine(entry, slot, module, refitter, names, weight_prototypes(refitter, names))

    def _rebuild(self) -> None:
        rebuilt = []
        for engine in self._engines:
            fresh = self._build(engine.entry, engine.slot)
            call = self._module.get_submodule(engine.slot)
            call.trt = fresh.module
            rebuilt.append(fresh)
        self._engines = rebuilt
        self._refitted = False

    def _torch_side_names(self, own: Mapping[str, tuple[int, ...]]) -> dict[str, str]:
        """The program's own weights (those PyTorch runs; the archive lists them), each with its name in
        the checkpoint: as is, or without the partition prefix."""
        names = {}
        for name in own:
            stripped = _TORCH_PARTITION.sub("", name)
            if name in self._expected or stripped in self._expected:
                names[name] = name if name in self._expected else stripped
            else:
                raise WorkerError(
                    f"engine {self._label}: the program's PyTorch-side weight '{name}' is not a checkpoint "
                    f"weight ('{stripped}' is not one either)"
                )
        return names

    def _torch_side_tensors(self) -> dict[str, torch.Tensor]:
        return {name: _attr(self._module, name) for name in self._torch_names}

    def _stage_torch_side(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        staged = {}
        for name, old in self._torch_side_tensors().items():
            value = state[self._torch_names[name]].detach().to(device=old.device, dtype=old.dtype)
            is_parameter = isinstance(old, torch.nn.Parameter)
            staged[name] = torch.nn.Parameter(value, requires_grad=False) if is_parameter else value
        return staged

    def _rebind(self, tensors: Mapping[str, torch.Tensor]) -> None:
        for name, tensor in tensors.items():
            owner, _, leaf = name.rpartition(".")
            setattr(self._module.get_submodule(owner) if owner else self._module, leaf, tensor)


def _expected_weights(
    record: Mapping[str, Any] | None, source: ExportedProgram | None, label: str
) -> dict[str, TensorSpec]:
    schema = schema_of(record) if record else None
    if schema is not None:
        return schema
    if source is not None:
        return {name: TensorSpec.of(t) for name, t in programs.weights_of(source).items()}
    raise WorkerError(
        f"engine {label}: neither a trtrefit compile record inside it nor a source program says which "
        "weights a checkpoint must hold (give the source program)"
    )


def _attr(module: torch.nn.Module, name: str) -> torch.Tensor:
    owner, _, leaf = name.rpartition(".")
    value = getattr(module.get_submodule(owner) if owner else module, leaf)
    if not isinstance(value, torch.Tensor):
        raise WorkerError(f"the program's weight '{name}' is not a tensor in the loaded module")
    return value


def _drop_attr(module: torch.nn.Module, target: str) -> None:
    owner, _, leaf = target.rpartition(".")
    holder = module.get_submodule(owner) if owner else module
    if hasattr(holder, leaf):
        delattr(holder, leaf)


class _EngineCall(torch.nn.Module):
    """Stands where `execute_engine(inputs, engine)` stood: takes the list of inputs, returns a list."""

    def __init__(self, trt: Any) -> None:
        super().__init__()
        self.trt = trt

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        out = self.trt(*inputs)
        return list(out) if isinstance(out, (list, tuple)) else [out]
