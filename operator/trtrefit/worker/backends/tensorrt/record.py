"""The refit record `trtrefit compile` stores inside engine.ep (extra/trtrefit-record.json).

While Torch-TensorRT builds each engine it hands every weight to `ConversionContext.record_weight`; we
keep a copy of those compile-time values. Each engine weight is then explained from the source program's
weights and verified by value: a checkpoint tensor (as is or transposed), BatchNorm algebra, or a small
constant recorded as numbers (eps, scalars of elementwise ops: TensorRT cannot hand them back later).
What cannot be explained is recorded as unknown, which sends a refit to the fallback path.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from trtrefit.worker.backends.tensorrt.plan import (
    BatchNormFold,
    Constant,
    FromCheckpoint,
    PlanMismatchError,
    WeightSource,
    materialize,
    parse_weight_name,
    plan_engine,
)
from trtrefit.worker.formats import TensorSpec

if TYPE_CHECKING:
    import torch

RECORD_VERSION = 1
SMALL_CONSTANT = 64


def _entry(source: WeightSource) -> dict[str, Any]:
    if isinstance(source, FromCheckpoint):
        entry: dict[str, Any] = {"kind": "checkpoint", "name": source.name, "transpose": source.transpose}
        if source.shape is not None:
            entry["shape"] = list(source.shape)
        return entry
    if isinstance(source, Constant):
        return {"kind": "constant", "values": list(source.values)}
    return {"kind": "batchnorm", "module": source.module, "eps": source.eps, "part": source.part}


def _reproduces(source: WeightSource, state: Mapping[str, torch.Tensor], value: torch.Tensor) -> bool:
    import torch

    try:
        made = materialize(source, state, value.numel(), value.dtype, "cpu")
    except (PlanMismatchError, KeyError):
        return False
    exact = isinstance(source, FromCheckpoint)
    expected = value.reshape(-1).cpu()
    if exact:
        return bool(torch.equal(made, expected))
    return bool(torch.allclose(made.double(), expected.double(), rtol=1e-4, atol=1e-6))


def _match_by_value(
    name: str, value: torch.Tensor, state: Mapping[str, torch.Tensor]
) -> FromCheckpoint | None:
    """The one floating state tensor equal to `value` as is, transposed, or broadcast to its shape (a
    parameter-only expression Torch-TensorRT folded, such as an expanded class token); ties broken by
    module path."""
    flat = value.reshape(-1).cpu()
    candidates = []
    for key, tensor in state.items():
        if not tensor.is_floating_point():
            continue
        cast = tensor.detach().to(flat.dtype)
        if tensor.numel() != flat.numel():
            if _broadcasts_to(cast, value):
                candidates.append(FromCheckpoint(key, shape=tuple(value.shape)))
            continue
        if _equal(cast.reshape(-1), flat):
            candidates.append(FromCheckpoint(key))
        elif cast.dim() == 2 and _equal(cast.t().reshape(-1), flat):
            candidates.append(FromCheckpoint(key, transpose=True))
    if len(candidates) > 1:
        module = parse_weight_name(name).module
        candidates = [
            c for c in candidates if module and (c.name == module or c.name.startswith(module + "."))
        ]
    return candidates[0] if len(candidates) == 1 else None


def _broadcasts_to(tensor: torch.Tensor, value: torch.Tensor) -> bool:
    """`tensor` (more than one element: a lone scalar equals too many things) broadcast to `value`'s
    shape is `value`."""
    import torch

    if tensor.numel() <= 1 or value.numel() % tensor.numel() != 0:
        return False
    try:
        expanded = tensor.broadcast_to(value.shape)
    except RuntimeError:
        return False
    return bool(torch.equal(expanded, value.cpu()))


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    import torch

    return bool(torch.equal(a, b))


def explain_engine(
    captured: Mapping[str, torch.Tensor],
    weight_name_map: Mapping[str, Any] | None,
    state: Mapping[str, torch.Tensor],
    bn_eps: Mapping[str, float],
) -> dict[str, dict[str, Any]]:
    """A record entry for every captured engine weight, each one checked against its compile-time value."""
    specs = {name: TensorSpec.of(t) for name, t in state.items()}
    plan = plan_engine(captured, weight_name_map, None, specs, bn_eps)
    record: dict[str, dict[str, Any]] = {}
    for name, value in captured.items():
        planned = plan.sources.get(name)
        if planned is not None and _reproduces(planned, state, value):
            record[name] = _entry(planned)
            continue
        matched = _match_by_value(name, value, state)
        if matched is not None:
            record[name] = _entry(matched)
        elif value.numel() <= SMALL_CONSTANT:
            record[name] = _entry(Constant(tuple(float(v) for v in value.reshape(-1).double().tolist())))
        else:
            record[name] = {
                "kind": "unknown",
                "why": "matches no checkpoint tensor and is too large to be a constant",
            }
    return record


def make_record(engines: Mapping[str, Mapping[str, Any]], state: Mapping[str, torch.Tensor]) -> str:
    """The JSON document: version, the checkpoint schema the engine expects, and per-engine entries."""
    schema = {
        name: {"shape": list(TensorSpec.of(t).shape), "dtype": TensorSpec.of(t).dtype}
        for name, t in state.items()
    }
    return json.dumps({"version": RECORD_VERSION, "schema": schema, "engines": engines}, sort_keys=True)


def schema_of(record: Mapping[str, Any]) -> dict[str, TensorSpec] | None:
    schema = record.get("schema")
    if not isinstance(schema, dict):
        return None
    return {name: TensorSpec(tuple(spec["shape"]), str(spec["dtype"])) for name, spec in schema.items()}


def engine_record(
    record: Mapping[str, Any] | None, engine_name: str, weight_names: set[str]
) -> dict[str, Any] | None:
    """The record of one engine: by its name, else the one recorded with exactly these weight names."""
    engines = record.get("engines") if record else None
    if not isinstance(engines, dict):
        return None
    entry = engines.get(engine_name)
    if isinstance(entry, dict):
        return entry
    return next((e for e in engines.values() if isinstance(e, dict) and set(e) == weight_names), None)


@contextmanager
def capture_weights() -> Iterator[list[dict[str, torch.Tensor]]]:
    """While active, every Torch-TensorRT conversion context's weights are copied to the CPU: one dict per
    engine built, in build order."""
    from torch_tensorrt.dynamo.conversion._ConversionContext import ConversionContext

    captured: list[dict[str, torch.Tensor]] = []
    original = ConversionContext.record_weight

    def record_weight(self: Any, name: str, weight: torch.Tensor) -> None:
        store = getattr(self, "_trtrefit_weights", None)
        if store is None:
            store = {}
            self._trtrefit_weights = store  # on the context itself: ids of dead contexts get reused
            captured.append(store)
        store[name] = weight.detach().to("cpu", copy=True)
        original(self, name, weight)

    ConversionContext.record_weight = record_weight
    try:
        yield captured
    finally:
        ConversionContext.record_weight = original


__all__ = ["BatchNormFold", "capture_weights", "engine_record", "explain_engine", "make_record", "schema_of"]
