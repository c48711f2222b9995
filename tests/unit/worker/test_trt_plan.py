"""The fast path's refit plan for small_cnn, with engine weight names and weight maps shaped the way
Torch-TensorRT writes them (TensorRT-RTX: BatchNorm as constants; full TensorRT: a scale layer)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from trtrefit.worker.backends.tensorrt.plan import (
    BatchNormFold,
    Constant,
    FromCheckpoint,
    PlanMismatchError,
    batchnorm_eps,
    materialize,
    parse_weight_name,
    plan_engine,
)
from trtrefit.worker.formats import TensorSpec
from trtrefit.worker.programs import quiet_torch
from trtrefit.worker.samples import small_cnn

BN = "_native_batch_norm_legit_no_training"
CONV0 = "[CONVOLUTION]-[aten_ops.convolution.default]-[0/convolution]"
CONV3 = "[CONVOLUTION]-[aten_ops.convolution.default]-[3/convolution_1]"


def rtx_weight_map() -> dict[str, Any]:
    """Names and pairings as torch_tensorrt 2.11 caches them for small_cnn on TensorRT-RTX, including
    its value-matching slip: each scalar eps paired with some BatchNorm's num_batches_tracked."""
    weight_map: dict[str, Any] = {
        f"{CONV0} KERNEL": ["0.weight", "float32"],
        f"{CONV0} BIAS": ["0.bias", "float32"],
        f"{CONV3} KERNEL": ["3.weight", "float32"],
        f"{CONV3} BIAS": ["3.bias", "float32"],
        "8/linear_weight CONSTANT": ["8.weight", "float32"],
        "8/linear_bias CONSTANT": ["8.bias", "float32"],
    }
    for module, node in (("1", BN), ("4", f"{BN}_1")):
        for stat in ("weight", "bias", "running_mean", "running_var"):
            weight_map[f"{module}/{node}_{stat} CONSTANT"] = [f"{module}.{stat}", "float32"]
    weight_map[f"1/{BN}_eps CONSTANT"] = ["4.num_batches_tracked", "float32"]
    weight_map[f"4/{BN}_1_eps CONSTANT"] = ["1.num_batches_tracked", "float32"]
    return weight_map


@pytest.fixture(scope="module")
def model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    built = small_cnn()
    assert isinstance(built, torch.nn.Sequential)
    return built


@pytest.fixture(scope="module")
def specs(model: torch.nn.Module) -> dict[str, TensorSpec]:
    return {name: TensorSpec.of(t) for name, t in model.state_dict().items()}


@pytest.fixture(scope="module")
def eps(model: torch.nn.Module) -> dict[str, float]:
    with quiet_torch():
        return batchnorm_eps(torch.export.export(model, (torch.randn(2, 3, 32, 32),)))


def test_weight_names_parse_into_type_module_leaf_and_role() -> None:
    conv = parse_weight_name(f"{CONV0} KERNEL")
    assert (conv.layer_type, conv.module, conv.leaf, conv.role) == (
        "CONVOLUTION",
        "0",
        "convolution",
        "KERNEL",
    )
    const = parse_weight_name(f"layer1.0.bn1/{BN}_eps CONSTANT")
    assert (const.layer_type, const.module, const.leaf, const.role) == (
        None,
        "layer1.0.bn1",
        f"{BN}_eps",
        "CONSTANT",
    )
    top = parse_weight_name("/mul_rhs CONSTANT")
    assert (top.module, top.leaf) == ("", "mul_rhs")


def test_eps_comes_from_the_graph_before_and_after_decomposition(model: torch.nn.Module) -> None:
    with quiet_torch():
        program = torch.export.export(model, (torch.randn(2, 3, 32, 32),))
        lowered = program.run_decompositions()
    assert batchnorm_eps(program) == {"1": 1e-5, "4": 1e-3}
    assert batchnorm_eps(lowered) == {"1": 1e-5, "4": 1e-3}


def test_tensorrt_rtx_names_all_resolve_with_eps_from_the_graph(
    specs: dict[str, TensorSpec], eps: dict[str, float]
) -> None:
    weight_map = rtx_weight_map()
    plan = plan_engine(weight_map, weight_map, None, specs, eps)
    assert plan.unresolved == {}
    assert plan.sources[f"1/{BN}_eps CONSTANT"] == Constant((1e-5,))
    assert plan.sources[f"4/{BN}_1_eps CONSTANT"] == Constant((1e-3,))
    assert plan.sources[f"{CONV3} KERNEL"] == FromCheckpoint("3.weight")
    assert plan.sources[f"4/{BN}_1_running_var CONSTANT"] == FromCheckpoint("4.running_var")


def test_full_tensorrt_scale_layers_fold_batchnorm_with_the_right_eps(
    specs: dict[str, TensorSpec], eps: dict[str, float]
) -> None:
    scale = f"[SCALE]-[aten_ops.{BN}.default]-[4/{BN}_1]"
    names = [f"{scale} SCALE", f"{scale} SHIFT", f"{scale} POWER"]
    stats = [f"4.{s}" for s in ("weight", "bias", "running_mean", "running_var")]
    weight_map = {f"{scale} SCALE": [stats, "float32"], f"{scale} SHIFT": [stats, "float32"]}
    plan = plan_engine(names, weight_map, None, specs, eps)
    assert plan.sources == {
        f"{scale} SCALE": BatchNormFold("4", 1e-3, "scale"),
        f"{scale} SHIFT": BatchNormFold("4", 1e-3, "shift"),
        f"{scale} POWER": Constant((1.0,)),
    }


def test_doubtful_pairings_and_unknown_constants_stay_unresolved(
    specs: dict[str, TensorSpec], eps: dict[str, float]
) -> None:
    weight_map = {
        "8/linear_bias CONSTANT": ["1.bias", "float32"],
        "8/linear_weight CONSTANT": ["", "float32"],
        "[CONVOLUTION]-[aten_ops.convolution.default]-[0/convolution] KERNEL": ["_frozen_param0", "float32"],
        "1/x_y CONSTANT": ["1.num_batches_tracked", "float32"],
    }
    names = [*weight_map, "/mul_rhs CONSTANT"]
    plan = plan_engine(names, weight_map, None, specs, eps)
    assert plan.sources == {}
    assert plan.unresolved == {
        "8/linear_bias CONSTANT": "the weight map pairs it with '1.bias', outside module '8'",
        "8/linear_weight CONSTANT": "the weight map has no checkpoint name for it (a constant?)",
        f"{CONV0} KERNEL": "the weight map names '_frozen_param0', which the checkpoint lacks",
        "1/x_y CONSTANT": "the weight map pairs it with non-float '1.num_batches_tracked'",
        "/mul_rhs CONSTANT": "not in the engine's weight map",
    }


def test_a_record_wins_over_everything_else(specs: dict[str, TensorSpec], eps: dict[str, float]) -> None:
    record = {
        "/mul_rhs CONSTANT": {"kind": "constant", "values": [0.125]},
        "8/t CONSTANT": {"kind": "checkpoint", "name": "8.weight", "transpose": True},
        "odd CONSTANT": {"kind": "unknown", "why": "matches no checkpoint tensor"},
        "gone CONSTANT": {"kind": "checkpoint", "name": "9.weight"},
    }
    plan = plan_engine(record, {}, record, specs, eps)
    assert plan.sources == {
        "/mul_rhs CONSTANT": Constant((0.125,)),
        "8/t CONSTANT": FromCheckpoint("8.weight", True),
    }
    assert plan.unresolved == {
        "odd CONSTANT": "matches no checkpoint tensor",
        "gone CONSTANT": "recorded as '9.weight', which the checkpoint lacks",
    }


class TestMaterialize:
    def test_batchnorm_fold_reproduces_the_module(self, model: torch.nn.Sequential) -> None:
        bn = model[4]
        state = model.state_dict()
        scale = materialize(BatchNormFold("4", 1e-3, "scale"), state, 32, torch.float32, "cpu")
        shift = materialize(BatchNormFold("4", 1e-3, "shift"), state, 32, torch.float32, "cpu")
        x = torch.randn(2, 32, 4, 4)
        with torch.no_grad():
            expected = bn(x)
        folded = x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
        torch.testing.assert_close(folded, expected)

    def test_checkpoint_tensors_flattened_transposed_and_cast(self) -> None:
        state = {"w": torch.arange(6.0).reshape(2, 3)}
        flat = materialize(FromCheckpoint("w"), state, 6, torch.float16, "cpu")
        assert flat.dtype == torch.float16
        assert flat.tolist() == [0, 1, 2, 3, 4, 5]
        assert materialize(FromCheckpoint("w", True), state, 6, torch.float32, "cpu").tolist() == [
            0,
            3,
            1,
            4,
            2,
            5,
        ]

    def test_scalar_constants_broadcast(self) -> None:
        assert materialize(Constant((1.0,)), {}, 4, torch.float32, "cpu").tolist() == [1.0] * 4

    def test_size_and_kind_mismatches_stop_the_fast_path(self) -> None:
        state = {"w": torch.ones(2, 3), "n": torch.tensor(3)}
        with pytest.raises(PlanMismatchError, match="gives 6 values, the engine weight holds 5"):
            materialize(FromCheckpoint("w"), state, 5, torch.float32, "cpu")
        with pytest.raises(PlanMismatchError, match=r"'n' is torch\.int64, the engine weight torch\.float32"):
            materialize(FromCheckpoint("n"), state, 1, torch.float32, "cpu")
