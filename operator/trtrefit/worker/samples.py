"""A tiny demo model and checkpoints made from model factories, for the demo, the tests and the bench.

`small_cnn` is conv + BatchNorm + linear with non-trivial BatchNorm statistics, so a refit that forgets
running statistics or eps shows up in verification. `write_checkpoint` makes the checkpoints a refit
demo needs: a good one (another seed, or jittered weights), one of the wrong shape, one with a NaN.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from trtrefit.worker.errors import WorkerError

if TYPE_CHECKING:
    import torch


def small_cnn() -> torch.nn.Module:
    """A 3x32x32 -> 10 classifier: two conv+BN+ReLU blocks, global pooling, a linear head."""
    import torch
    from torch import nn

    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2),
        nn.BatchNorm2d(32, eps=1e-3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                _randomise_batchnorm(module)
    return model.eval()


def resnet18() -> torch.nn.Module:
    """torchvision's resnet18 with trained-looking weights (BatchNorm statistics included)."""
    import torchvision

    return _trained_looking(torchvision.models.resnet18(weights=None))


def resnet50() -> torch.nn.Module:
    """torchvision's resnet50 with trained-looking weights (BatchNorm statistics included)."""
    import torchvision

    return _trained_looking(torchvision.models.resnet50(weights=None))


def vit_b_16() -> torch.nn.Module:
    """torchvision's vit_b_16 with trained-looking weights. torchvision zero-initialises the head, which
    makes every output 0 and any refit "match": the head gets a normal draw first."""
    import torch
    import torchvision

    model = torchvision.models.vit_b_16(weights=None)
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    return _trained_looking(model)


def _trained_looking(model: torch.nn.Module) -> torch.nn.Module:
    """Random BatchNorm statistics and every float tensor jittered, drawn from torch's global RNG."""
    import torch

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                _randomise_batchnorm(module)
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        model.load_state_dict(perturb(model.state_dict(), "jitter", seed))
    return model.eval()


def _randomise_batchnorm(bn: torch.nn.BatchNorm2d) -> None:
    """Trained-looking BatchNorm: affine and running statistics away from their 1/0 initial values."""
    if bn.running_mean is None or bn.running_var is None:
        return
    bn.weight.uniform_(0.5, 1.5)
    bn.bias.normal_(0.0, 0.1)
    bn.running_mean.normal_(0.0, 0.2)
    bn.running_var.uniform_(0.5, 2.0)


def load_factory(spec: str) -> Callable[[], torch.nn.Module]:
    """Resolve `package.module:function` to a callable without arguments."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise WorkerError(
            f"--model {spec!r}: expected MODULE:FUNCTION, e.g. trtrefit.worker.samples:small_cnn"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise WorkerError(f"--model {spec!r}: cannot import {module_name}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise WorkerError(f"--model {spec!r}: {module_name} has no callable {attr!r}")
    return factory  # type: ignore[no-any-return]


def build(spec: str, seed: int) -> torch.nn.Module:
    """The factory's model with its weights drawn from `seed`, in eval mode."""
    import torch

    factory = load_factory(spec)
    torch.manual_seed(seed)
    try:
        model = factory()
    except TypeError as exc:
        raise WorkerError(f"--model {spec!r}: calling it failed: {exc}") from exc
    if not isinstance(model, torch.nn.Module):
        raise WorkerError(f"--model {spec!r}: returned {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


def perturb(state: dict[str, torch.Tensor], kind: str, seed: int) -> dict[str, torch.Tensor]:
    """A perturbed copy of a state_dict.

    jitter: every floating tensor scaled elementwise by 1 + 0.1*N(0, 1) plus a small offset (running
    variances kept positive), so parameters, zero-initialised heads and BatchNorm statistics all change;
    wrong-shape: the last 2-D weight loses its last row; nonfinite: a NaN in the first floating weight.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    out = {name: t.detach().clone() for name, t in state.items()}
    floats = [name for name, t in out.items() if t.is_floating_point()]
    if kind == "jitter":
        for name in floats:
            t = out[name]
            noise = torch.randn(t.shape, generator=generator, dtype=torch.float32).to(t.dtype)
            offset = torch.randn(t.shape, generator=generator, dtype=torch.float32).to(t.dtype) * 0.01
            value = t * (1 + 0.1 * noise) + offset
            out[name] = value.abs() + 1e-3 if name.endswith("running_var") else value
    elif kind == "wrong-shape":
        matrices = [name for name in floats if out[name].dim() == 2]
        if not matrices:
            raise WorkerError("--perturb wrong-shape: the model has no 2-D weight to cut")
        out[matrices[-1]] = out[matrices[-1]][:-1].clone()
    elif kind == "nonfinite":
        out[floats[0]].view(-1)[0] = float("nan")
    elif kind != "none":
        raise WorkerError(f"--perturb {kind!r}: expected none, jitter, wrong-shape or nonfinite")
    return out


def write_checkpoint(spec: str, seed: int, kind: str, output: Path) -> None:
    """Save the factory's weights (seeded, perturbed as asked) as a safetensors state_dict."""
    from safetensors.torch import save_file

    state = perturb(build(spec, seed).state_dict(), kind, seed)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_file({name: t.contiguous() for name, t in state.items()}, str(output))
