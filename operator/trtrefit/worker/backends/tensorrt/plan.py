"""Where every TensorRT engine weight comes from: the refit plan of the fast path. Pure logic over names
(and, in `materialize`, tensors), so it is tested without a GPU.

Engine weight names are those Torch-TensorRT gives them, e.g.
    [CONVOLUTION]-[aten_ops.convolution.default]-[layer1.0.conv1/convolution] KERNEL
    [SCALE]-[aten_ops._native_batch_norm_legit_no_training.default]-[layer1.0.bn1/_native_..] SHIFT
    layer1.0.bn1/_native_batch_norm_legit_no_training_eps CONSTANT          (TensorRT-RTX BatchNorm)
i.e. an optional layer type and op, the module path, the FX node (plus a suffix) and a role.

Sources, in order of trust: the record `trtrefit compile` verified against the compile-time values;
BatchNorm algebra with eps read from the source graph; Torch-TensorRT's cached weight-name map, accepted
only for a floating checkpoint tensor of the same module (its value matching pairs identical tensors
arbitrarily). Whatever stays unresolved sends the refit to the fallback path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trtrefit.worker.formats import TensorSpec

if TYPE_CHECKING:
    import torch
    from torch.export import ExportedProgram

FLOAT_DTYPES = frozenset({"float32", "float16", "bfloat16", "float64"})


@dataclass(frozen=True)
class FromCheckpoint:
    """A checkpoint tensor, optionally transposed (2-D) and/or broadcast to `shape`: Torch-TensorRT folds
    parameter-only expressions into constants, e.g. ViT's class token expanded to the batch."""

    name: str
    transpose: bool = False
    shape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Constant:
    values: tuple[float, ...]


@dataclass(frozen=True)
class BatchNormFold:
    """TensorRT's scale layer for an inference BatchNorm: scale = w/sqrt(var+eps), shift = b - mean*scale."""

    module: str
    eps: float
    part: str  # "scale" or "shift"


WeightSource = FromCheckpoint | Constant | BatchNormFold


@dataclass
class EnginePlan:
    sources: dict[str, WeightSource] = field(default_factory=dict)
    unresolved: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WeightName:
    layer_type: str | None
    module: str
    leaf: str
    role: str


class PlanMismatchError(Exception):
    """A planned source does not fit the engine's weight (size, dtype): the fast path must not go on."""


def parse_weight_name(name: str) -> WeightName:
    base, _, role = name.rpartition(" ")
    if not base:
        base, role = name, ""
    layer_type = None
    if base.startswith("[") and base.endswith("]") and "]-[" in base:
        parts = base[1:-1].split("]-[")
        layer_type, base = parts[0], parts[-1]
    module, _, leaf = base.rpartition("/")
    return WeightName(layer_type, module, leaf, role)


def _inside(name: str, module: str) -> bool:
    return module in ("", name) or name.startswith(module + ".")


def plan_engine(
    names: Iterable[str],
    weight_name_map: Mapping[str, Any] | None,
    record: Mapping[str, Any] | None,
    checkpoint: Mapping[str, TensorSpec],
    bn_eps: Mapping[str, float],
) -> EnginePlan:
    """A source for every engine weight name, or the reason there is none."""
    plan = EnginePlan()
    for name in names:
        source, why = _resolve(name, weight_name_map or {}, record or {}, checkpoint, bn_eps)
        if source is not None:
            plan.sources[name] = source
        else:
            plan.unresolved[name] = why
    return plan


def _resolve(
    name: str,
    weight_name_map: Mapping[str, Any],
    record: Mapping[str, Any],
    checkpoint: Mapping[str, TensorSpec],
    bn_eps: Mapping[str, float],
) -> tuple[WeightSource | None, str]:
    if name in record:
        return _from_record(record[name], checkpoint)
    parsed = parse_weight_name(name)
    if parsed.layer_type == "SCALE":
        return _batchnorm_scale_layer(parsed, checkpoint, bn_eps)
    if parsed.leaf.endswith("_eps") and parsed.module in bn_eps:
        return Constant((bn_eps[parsed.module],)), ""
    if name not in weight_name_map:
        return None, "not in the engine's weight map"
    return _from_weight_map(weight_name_map[name], parsed, checkpoint)


def _from_weight_map(
    entry: Any, parsed: WeightName, checkpoint: Mapping[str, TensorSpec]
) -> tuple[WeightSource | None, str]:
    """Torch-TensorRT's cached pairing, trusted only for a float tensor of the same module."""
    sd_name = entry[0] if isinstance(entry, (list, tuple)) and entry else entry
    if not isinstance(sd_name, str) or not sd_name:
        return None, "the weight map has no checkpoint name for it (a constant?)"
    if sd_name not in checkpoint:
        return None, f"the weight map names '{sd_name}', which the checkpoint lacks"
    if checkpoint[sd_name].dtype not in FLOAT_DTYPES:
        return None, f"the weight map pairs it with non-float '{sd_name}'"
    if not _inside(sd_name, parsed.module):
        return None, f"the weight map pairs it with '{sd_name}', outside module '{parsed.module}'"
    return FromCheckpoint(sd_name), ""


def _from_record(entry: Any, checkpoint: Mapping[str, TensorSpec]) -> tuple[WeightSource | None, str]:
    kind = entry.get("kind") if isinstance(entry, dict) else None
    if kind == "checkpoint":
        name = str(entry["name"])
        if name not in checkpoint:
            return None, f"recorded as '{name}', which the checkpoint lacks"
        shape = entry.get("shape")
        broadcast = tuple(int(d) for d in shape) if isinstance(shape, list) else None
        return FromCheckpoint(name, bool(entry.get("transpose", False)), broadcast), ""
    if kind == "constant":
        return Constant(tuple(float(v) for v in entry["values"])), ""
    if kind == "batchnorm":
        return BatchNormFold(str(entry["module"]), float(entry["eps"]), str(entry["part"])), ""
    if isinstance(entry, dict):
        return None, str(entry.get("why", "recorded as unknown"))
    return None, "bad record entry"


def _batchnorm_scale_layer(
    parsed: WeightName, checkpoint: Mapping[str, TensorSpec], bn_eps: Mapping[str, float]
) -> tuple[WeightSource | None, str]:
    if parsed.role == "POWER":
        return Constant((1.0,)), ""
    if parsed.role not in ("SCALE", "SHIFT"):
        return None, f"unknown scale-layer role {parsed.role!r}"
    if parsed.module not in bn_eps:
        return None, f"no BatchNorm eps for module '{parsed.module}' (pass --source)"
    for stat in ("running_mean", "running_var"):
        if f"{parsed.module}.{stat}" not in checkpoint:
            return None, f"the checkpoint lacks '{parsed.module}.{stat}'"
    return BatchNormFold(parsed.module, bn_eps[parsed.module], parsed.role.lower()), ""


def batchnorm_eps(program: ExportedProgram) -> dict[str, float]:
    """eps of every BatchNorm in the program's graph, by module path (the owner of its running_var and
    the module the node was called in), read from the node's arguments or the op's default."""
    buffers = program.graph_signature.inputs_to_buffers
    found: dict[str, float] = {}
    for node in program.graph.nodes:
        if node.op != "call_function" or "batch_norm" not in str(node.target):
            continue
        schema = getattr(node.target, "_schema", None)
        if schema is None:
            continue
        arg_names = [a.name for a in schema.arguments]
        eps_name = next((n for n in ("eps", "epsilon") if n in arg_names), None)
        if eps_name is None or "running_var" not in arg_names:
            continue
        index = arg_names.index(eps_name)
        if len(node.args) > index:
            eps = node.args[index]
        else:
            eps = node.kwargs.get(eps_name, schema.arguments[index].default_value)
        var_index = arg_names.index("running_var")
        var = node.args[var_index] if len(node.args) > var_index else None
        owner = buffers.get(getattr(var, "name", ""), "")
        if owner.endswith(".running_var"):
            found[owner.removesuffix(".running_var")] = float(eps)
        stack = node.meta.get("nn_module_stack")
        if stack:
            found.setdefault(str(list(stack.values())[-1][0]), float(eps))
    return found


def materialize(
    source: WeightSource, state: Mapping[str, torch.Tensor], count: int, dtype: torch.dtype, device: str
) -> torch.Tensor:
    """The flat, contiguous tensor of `count` elements of `dtype` on `device` that the engine weight gets."""
    import torch

    if isinstance(source, FromCheckpoint):
        value = state[source.name]
        if not value.is_floating_point() and dtype.is_floating_point:
            raise PlanMismatchError(f"'{source.name}' is {value.dtype}, the engine weight {dtype}")
        value = value.t() if source.transpose else value
        if source.shape is not None:
            try:
                value = value.broadcast_to(source.shape)
            except RuntimeError as exc:
                raise PlanMismatchError(
                    f"'{source.name}' does not broadcast to {list(source.shape)}"
                ) from exc
    elif isinstance(source, Constant):
        value = torch.tensor(source.values, dtype=torch.float64)
        if value.numel() == 1 and count > 1:
            value = value.expand(count)
    else:
        value = _fold_batchnorm(source, state)
    flat = value.detach().to(device=device, dtype=dtype).contiguous().reshape(-1)
    if flat.numel() != count:
        raise PlanMismatchError(f"gives {flat.numel()} values, the engine weight holds {count}")
    return flat


def _fold_batchnorm(source: BatchNormFold, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
    import torch

    mean = state[f"{source.module}.running_mean"].double()
    var = state[f"{source.module}.running_var"].double()
    weight = state.get(f"{source.module}.weight")
    bias = state.get(f"{source.module}.bias")
    w = weight.double() if weight is not None else torch.ones_like(var)
    b = bias.double() if bias is not None else torch.zeros_like(mean)
    scale = w / torch.sqrt(var + source.eps)
    return scale if source.part == "scale" else b - mean * scale
