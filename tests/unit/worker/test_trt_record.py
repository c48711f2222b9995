"""The compile-time record: each captured engine weight explained from the source weights and checked
against its compile-time value, so the refit never trusts a guess."""

from __future__ import annotations

import json

import torch

from tests.unit.worker.test_trt_plan import BN, CONV0, rtx_weight_map
from trtrefit.worker.backends.tensorrt.plan import plan_engine
from trtrefit.worker.backends.tensorrt.record import engine_record, explain_engine, make_record, schema_of
from trtrefit.worker.formats import TensorSpec
from trtrefit.worker.samples import small_cnn

EPS = {"1": 1e-5, "4": 1e-3}


def captured_for(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The values torch_tensorrt hands to record_weight for small_cnn on TensorRT-RTX."""
    captured = {}
    for name, (source, _) in rtx_weight_map().items():
        captured[name] = state[source].clone() if not source.endswith("num_batches_tracked") else None
    captured[f"1/{BN}_eps CONSTANT"] = torch.tensor(1e-5)
    captured[f"4/{BN}_1_eps CONSTANT"] = torch.tensor(1e-3)
    return {k: v for k, v in captured.items() if v is not None}


def state_of(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.detach().clone() for k, v in small_cnn().state_dict().items()}


def test_every_weight_of_small_cnn_is_explained() -> None:
    state = state_of(0)
    record = explain_engine(captured_for(state), rtx_weight_map(), state, EPS)
    assert record[f"{CONV0} KERNEL"] == {"kind": "checkpoint", "name": "0.weight", "transpose": False}
    assert record[f"1/{BN}_eps CONSTANT"] == {"kind": "constant", "values": [1e-5]}
    assert all(entry["kind"] in ("checkpoint", "constant") for entry in record.values())


def test_weights_outside_the_map_are_found_by_value_even_transposed() -> None:
    state = state_of(0)
    captured = {
        "_frozen/permute CONSTANT": state["8.weight"].t().contiguous(),
        "/mul_rhs CONSTANT": torch.tensor(0.5),
    }
    record = explain_engine(captured, {}, state, EPS)
    assert record["_frozen/permute CONSTANT"] == {"kind": "checkpoint", "name": "8.weight", "transpose": True}
    assert record["/mul_rhs CONSTANT"] == {"kind": "constant", "values": [0.5]}


def test_identical_tensors_are_told_apart_by_module_path_or_left_unknown() -> None:
    state = {"a.bias": torch.zeros(100), "b.bias": torch.zeros(100)}
    captured = {"b/add_bias CONSTANT": torch.zeros(100), "c/add_other CONSTANT": torch.zeros(100)}
    record = explain_engine(captured, {}, state, {})
    assert record["b/add_bias CONSTANT"] == {"kind": "checkpoint", "name": "b.bias", "transpose": False}
    assert record["c/add_other CONSTANT"]["kind"] == "unknown"


def test_a_wrong_cached_pairing_is_caught_by_value() -> None:
    state = state_of(0)
    weight_map = {"8/linear_bias CONSTANT": ["8.weight", "float32"]}
    record = explain_engine({"8/linear_bias CONSTANT": state["8.bias"]}, weight_map, state, EPS)
    assert record["8/linear_bias CONSTANT"] == {"kind": "checkpoint", "name": "8.bias", "transpose": False}


def test_the_record_round_trips_into_a_plan_for_new_weights() -> None:
    state = state_of(0)
    engines = {"_run_on_acc_0_engine": explain_engine(captured_for(state), rtx_weight_map(), state, EPS)}
    document = json.loads(make_record(engines, state))
    schema = schema_of(document)
    assert schema is not None
    assert schema["8.weight"] == TensorSpec((10, 32), "float32")
    record = engine_record(document, "_run_on_acc_0_engine", set())
    assert record is not None
    assert engine_record(document, "renamed", set(record)) == record
    plan = plan_engine(record, {}, record, schema, {})
    assert plan.unresolved == {}


def test_a_parameter_folded_and_broadcast_is_recorded_with_its_shape() -> None:
    # ViT's class token (1, 1, D) expanded to the batch and folded by Torch-TensorRT into one constant.
    torch.manual_seed(0)
    state = {"class_token": torch.randn(1, 1, 16), "other.bias": torch.randn(16)}
    captured = {"/expand CONSTANT": state["class_token"].expand(8, 1, 16).clone()}
    record = explain_engine(captured, {}, state, {})
    assert record["/expand CONSTANT"] == {
        "kind": "checkpoint",
        "name": "class_token",
        "transpose": False,
        "shape": [8, 1, 16],
    }
    # A large constant that no checkpoint tensor broadcasts to stays unknown: the fast path refuses it.
    captured = {"/expand CONSTANT": torch.randn(8, 1, 16)}
    assert explain_engine(captured, {}, state, {})["/expand CONSTANT"]["kind"] == "unknown"
