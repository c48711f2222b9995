"""The demo model and the checkpoints made from it."""

from __future__ import annotations

import pytest
import torch

from trtrefit.worker.errors import WorkerError
from trtrefit.worker.samples import build, load_factory, perturb

MODEL = "trtrefit.worker.samples:small_cnn"


def layer(seed: int, index: int) -> torch.nn.Module:
    """One layer of the demo model (a Sequential)."""
    model = build(MODEL, seed)
    assert isinstance(model, torch.nn.Sequential)
    found: torch.nn.Module = model[index]
    return found


def test_small_cnn_has_trained_looking_batchnorm() -> None:
    assert not build(MODEL, 0).training
    bn = layer(0, 1)
    assert isinstance(bn, torch.nn.BatchNorm2d) and bn.running_mean is not None and bn.running_var is not None
    assert float(bn.running_mean.abs().max()) > 0
    assert not torch.equal(bn.running_var, torch.ones_like(bn.running_var))
    assert layer(0, 4).eps == 1e-3


def weight(seed: int) -> torch.Tensor:
    conv = layer(seed, 0)
    assert isinstance(conv, torch.nn.Conv2d)
    return conv.weight


def test_seeds_make_different_weights() -> None:
    assert not torch.equal(weight(1), weight(2))
    assert torch.equal(weight(1), weight(1))


def test_jitter_changes_every_float_tensor_and_keeps_variances_positive() -> None:
    state = build(MODEL, 0).state_dict()
    state["8.bias"].zero_()
    jittered = perturb(state, "jitter", 5)
    for name, tensor in state.items():
        if tensor.is_floating_point():
            assert not torch.equal(jittered[name], tensor), name
    assert float(jittered["1.running_var"].min()) > 0
    assert torch.equal(jittered["1.num_batches_tracked"], state["1.num_batches_tracked"])


def test_bad_perturbations() -> None:
    state = build(MODEL, 0).state_dict()
    assert perturb(state, "wrong-shape", 0)["8.weight"].shape == (9, 32)
    assert bool(perturb(state, "nonfinite", 0)["0.weight"].isnan().any())
    with pytest.raises(WorkerError, match="--perturb 'odd'"):
        perturb(state, "odd", 0)


def test_factories_must_be_callables_returning_modules() -> None:
    with pytest.raises(WorkerError, match="has no callable 'nope'"):
        load_factory("trtrefit.worker.samples:nope")
    with pytest.raises(WorkerError, match=r"returned int, not a torch\.nn\.Module"):
        build("builtins:int", 0)
    with pytest.raises(WorkerError, match="calling it failed"):
        build("math:floor", 0)
