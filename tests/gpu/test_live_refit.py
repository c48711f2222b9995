"""Live engines on a real GPU: `TensorRTLive` keeps each engine, its execution context and one Refitter,
and its outputs follow the checkpoint applied, A -> B -> back to A, each checked against an EAGER
torchvision (or plain nn.Module) model given that checkpoint with `load_state_dict`, run in IEEE fp32 —
not against our own weight-swapping code. Skipped without CUDA and torch_tensorrt (conftest.py).

Models: resnet50 and vit_b_16 (batch 8) compiled by `trtrefit compile --backend tensorrt` (with the
refit record), and a partitioned program (a PyTorch `mm` with its own weight between two engines)
compiled with plain `torch_tensorrt.dynamo.compile(torch_executed_ops=...)` + `torch_tensorrt.save`: no
record, so its plan comes from Torch-TensorRT's weight map and BatchNorm eps from the source graph.

Checkpoints are perturbed copies of the compiled weights (every tensor, BatchNorm statistics included),
and every comparison first checks that it can fail: the reference is not constant and A's and B's
references differ by far more than the tolerance. Apply times are printed and, with
TRTREFIT_LIVE_TIMINGS=<file>, appended there as JSON lines; nothing here asserts a time.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from trtrefit.worker.errors import WorkerError
from trtrefit.worker.verify import Tolerances, verify

SPECS = "trtrefit.worker.samples"
BATCH = 8


@dataclass
class LiveCase:
    name: str
    engine: Path
    source: Any  # ExportedProgram (CPU weights)
    inputs: list[Any]
    checkpoints: dict[str, dict[str, Any]]  # "A", "B"
    expected: dict[str, list[Any]]  # eager outputs per checkpoint
    tolerances: Tolerances


def partitioned() -> Any:
    """conv+BN+ReLU (engine) -> a PyTorch mm with its own weight W, then sigmoid -> conv+BN (eps 1e-3)+
    ReLU+1x1 classifier (engine)."""
    import torch
    from torch import nn

    from trtrefit.worker.samples import _randomise_batchnorm

    class Partitioned(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
            self.W = nn.Parameter(torch.randn(16, 16) * 0.25)
            self.block2 = nn.Sequential(
                nn.Conv2d(16, 32, 3, padding=1, stride=2),
                nn.BatchNorm2d(32, eps=1e-3),
                nn.ReLU(),
                nn.Conv2d(32, 10, 1),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.block1(x)
            n, c, h, w = y.shape
            y = torch.mm(y.permute(0, 2, 3, 1).reshape(-1, c), self.W)
            y = torch.sigmoid(y).reshape(n, h, w, c).permute(0, 3, 1, 2)
            return self.block2(y)  # type: ignore[no-any-return]

    model = Partitioned()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                _randomise_batchnorm(module)
    return model.eval()


def eager_model(name: str) -> Callable[[], Any]:
    import torchvision

    return {
        "resnet50": lambda: torchvision.models.resnet50(weights=None),
        "vit_b_16": lambda: torchvision.models.vit_b_16(weights=None),
        "partitioned": partitioned,
    }[name]


def eager_outputs(name: str, state: dict[str, Any], inputs: list[Any]) -> list[Any]:
    """The reference: a fresh eager model given `state` by load_state_dict, IEEE fp32 on the GPU."""
    import torch

    from trtrefit.worker.refit import exact_fp32

    model = eager_model(name)()
    model.load_state_dict(state)
    model = model.eval().cuda()
    with exact_fp32("cuda"), torch.inference_mode():
        out = model(*[t.cuda() for t in inputs])
    return [out]


def compile_partitioned(root: Path) -> tuple[Path, Any, list[Any], dict[str, Any]]:
    import torch
    import torch_tensorrt

    from trtrefit.worker import programs

    torch.manual_seed(0)
    model = partitioned().cuda()
    inputs = [torch.randn(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(1))]
    cuda_inputs = [t.cuda() for t in inputs]
    with programs.quiet_torch():
        exported = torch.export.export(model, tuple(cuda_inputs))
        compiled = torch_tensorrt.dynamo.compile(
            exported,
            arg_inputs=cuda_inputs,
            immutable_weights=False,
            min_block_size=1,
            torch_executed_ops={torch.ops.aten.mm.default},
        )
        engine = root / "engine.ep"
        torch_tensorrt.save(compiled, str(root / "engine.pt2"), arg_inputs=cuda_inputs)
    (root / "engine.pt2").replace(engine)
    source = programs.to_device(exported, "cpu")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return engine, source, inputs, state


def compile_torchvision(name: str, root: Path) -> tuple[Path, Any, list[Any], dict[str, Any]]:
    from trtrefit.worker import programs
    from trtrefit.worker.compile import CompileRequest, compile_bundle
    from trtrefit.worker.inputs import load_inputs
    from trtrefit.worker.samples import build

    spec = f"{SPECS}:{name}"
    compile_bundle(CompileRequest(output=root, shapes=[(BATCH, 3, 224, 224)], backend="tensorrt", model=spec))
    source = programs.load_program(root / "source.pt2", "source")
    inputs = load_inputs(root / "inputs.safetensors", "inputs")
    return root / "engine.ep", source, inputs, build(spec, 0).state_dict()


TOLERANCES = {  # as tests/gpu/test_tensorrt_refit.py: the engine's own arithmetic is what they bound
    "resnet50": Tolerances(rtol=1e-2, atol=2.0, min_cosine_similarity=0.99999),
    "vit_b_16": Tolerances(rtol=1e-2, atol=1e-2, min_cosine_similarity=0.99999),
    "partitioned": Tolerances(rtol=1e-2, atol=1e-2, min_cosine_similarity=0.9999),
}


@pytest.fixture(scope="module", params=["partitioned", "resnet50", "vit_b_16"])
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LiveCase:
    from trtrefit.worker.samples import perturb

    name = request.param
    root = tmp_path_factory.mktemp(name)
    if name == "partitioned":
        engine, source, inputs, base = compile_partitioned(root)
    else:
        engine, source, inputs, base = compile_torchvision(name, root)
    checkpoints = {"A": perturb(base, "jitter", 11), "B": perturb(base, "jitter", 12)}
    expected = {key: eager_outputs(name, state, inputs) for key, state in checkpoints.items()}
    return LiveCase(name, engine, source, inputs, checkpoints, expected, TOLERANCES[name])


@pytest.fixture(scope="module")
def live(case: LiveCase) -> Any:
    from trtrefit.serving.tensorrt import TensorRTLive

    return TensorRTLive(case.engine, str(case.engine), case.source, "cuda")


def record(case: LiveCase, **values: Any) -> None:
    line = json.dumps({"model": case.name, **values}, sort_keys=True)
    print(f"LIVE {line}")
    target = os.environ.get("TRTREFIT_LIVE_TIMINGS")
    if target:
        with open(target, "a") as handle:
            handle.write(line + "\n")


def check_serves(case: LiveCase, live: Any, key: str) -> list[Any]:
    """The live outputs match the eager model on checkpoint `key`, and that comparison can fail."""
    import torch

    other = "B" if key == "A" else "A"
    expected, elsewhere = case.expected[key], case.expected[other]
    actual = live.infer(case.inputs)
    torch.cuda.synchronize()
    assert len(actual) == len(expected)
    for ours, want, alt in zip(actual, expected, elsewhere, strict=True):
        assert float(want.double().std()) > 0, "the reference is constant: the comparison could not fail"
        error = float((ours.double() - want.double()).abs().max())
        spread = float((alt.double() - want.double()).abs().max())
        assert error < 0.1 * spread, f"{key}: error {error} is not small next to A-B difference {spread}"
    report = verify(actual, expected, case.tolerances)
    assert report.verification.passed, f"checkpoint {key}: {report.message}"
    return [t.detach().clone() for t in actual]


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    import torch

    torch.cuda.synchronize()
    started = time.perf_counter()
    value = fn()
    torch.cuda.synchronize()
    return value, round(time.perf_counter() - started, 4)


def test_every_engine_runs_live_with_its_own_refitter(case: LiveCase, live: Any) -> None:
    import torch

    graph = live._module.graph
    assert not any(node.target is torch.ops.tensorrt.execute_engine.default for node in graph.nodes)
    assert live.engine_count >= (2 if case.name == "partitioned" else 1)
    assert all(engine.refitter is not None and engine.names for engine in live._engines)
    if case.name == "partitioned":
        assert set(live.torch_side_names.values()) == {"W"}, live.torch_side_names


def test_outputs_follow_the_checkpoint_and_roll_back(case: LiveCase, live: Any) -> None:
    """A (the priming refit) -> B -> previous (A again), each checked against the eager model."""
    staged_a, stage_a_s = timed(lambda: live.stage(case.checkpoints["A"]))
    _, prime_s = timed(lambda: live.apply(staged_a))
    first_a = check_serves(case, live, "A")
    assert live.primed
    previous = live.current()
    assert previous is staged_a
    staged_b, stage_b_s = timed(lambda: live.stage(case.checkpoints["B"]))
    _, apply_b_s = timed(lambda: live.apply(staged_b))
    check_serves(case, live, "B")
    _, rollback_s = timed(lambda: live.apply(previous))
    again_a = check_serves(case, live, "A")
    drift = max(float((x - y).abs().max()) for x, y in zip(first_a, again_a, strict=True))
    again = []
    for index in range(4):  # warm applies alternate B and A
        staged = staged_b if index % 2 == 0 else staged_a
        again.append(timed(functools.partial(live.apply, staged))[1])
    check_serves(case, live, "A")
    record(
        case,
        engines=live.engine_count,
        stage_s=[stage_a_s, stage_b_s],
        prime_s=prime_s,
        apply_s=[apply_b_s, rollback_s, *again],
        a_again_max_abs_diff=drift,
    )


def test_a_bad_checkpoint_is_refused_and_what_serves_is_untouched(case: LiveCase, live: Any) -> None:
    import torch

    before = [t.clone() for t in live.infer(case.inputs)]
    good = case.checkpoints["B"]
    name = next(k for k, v in good.items() if v.is_floating_point() and v.dim() >= 2)
    missing = {k: v for k, v in good.items() if k != name}
    with pytest.raises(WorkerError, match=f"missing key '{name}'"):
        live.stage(missing)
    wrong = dict(good) | {name: good[name][:-1].clone()}
    with pytest.raises(WorkerError, match=f"key '{name}' shape"):
        live.stage(wrong)
    after = live.infer(case.inputs)
    assert all(torch.equal(x, y) for x, y in zip(before, after, strict=True))


def test_a_copy_without_put_back_holds_no_staged_weights_and_refuses_to_run_after_a_failed_refit(
    case: LiveCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's copies (put_back=False): once applied, the staged weights belong to the caller alone, so
    dropping them frees their GPU memory; a refit that fails half-way leaves the copy refusing to run until
    a refit passes. The failure is injected (TensorRT's set call, mocked to raise after setting every
    weight): a real Refitter cannot be made to fail half-way on demand."""
    import gc

    import torch

    from trtrefit.serving.tensorrt import LiveRefitError, TensorRTLive
    from trtrefit.worker.backends.tensorrt.backend import set_weights

    if case.name == "vit_b_16":
        pytest.skip("resnet50 and the partitioned program cover it; vit_b_16 primes for 10 s")
    live = TensorRTLive(case.engine, str(case.engine), case.source, "cuda", put_back=False)
    staged = live.stage(case.checkpoints["A"])
    live.apply(staged)
    check_serves(case, live, "A")
    with pytest.raises(RuntimeError, match="keeps no previous weights"):
        live.current()
    kept = {t.untyped_storage().data_ptr() for t in case.checkpoints["A"].values() if t.is_cuda}
    own = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for values in staged.engines or ()
        for t in values.values()
        if t.untyped_storage().data_ptr() not in kept
    }
    assert own, "the staged values share every storage with the checkpoint: nothing to free"
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    del staged
    gc.collect()
    assert before - torch.cuda.memory_allocated() >= sum(own.values())

    def set_then_fail(*args: Any, **kwargs: Any) -> None:
        set_weights(*args, **kwargs)
        raise RuntimeError("injected: the refit failed after the weights were set")

    monkeypatch.setattr("trtrefit.serving.tensorrt.set_weights", set_then_fail)
    with pytest.raises(LiveRefitError, match="keeps no previous weights"):
        live.apply(live.stage(case.checkpoints["B"]))
    with pytest.raises(LiveRefitError, match="runs again only after a refit passes"):
        live.infer(case.inputs)
    monkeypatch.undo()
    live.apply(live.stage(case.checkpoints["B"]))
    check_serves(case, live, "B")


def test_rolling_back_to_the_compiled_weights(case: LiveCase) -> None:
    """Before the first refit, current() is the compiled-in weights, which an engine cannot hand back:
    applying it after a refit deserializes the engines again (fresh Refitters)."""
    import torch

    from trtrefit.serving.tensorrt import TensorRTLive

    if case.name != "partitioned":
        pytest.skip("one small model is enough; it rebuilds every engine")
    live = TensorRTLive(case.engine, str(case.engine), case.source, "cuda")
    compiled = [t.clone() for t in live.infer(case.inputs)]
    initial = live.current()
    live.apply(live.stage(case.checkpoints["A"]))
    check_serves(case, live, "A")
    live.apply(initial)
    assert not live.primed
    back = live.infer(case.inputs)
    assert all(torch.allclose(x, y, rtol=1e-5, atol=1e-6) for x, y in zip(compiled, back, strict=True))
    live.apply(live.stage(case.checkpoints["B"]))
    check_serves(case, live, "B")


@pytest.mark.parametrize("refit_sms", [None, 16], ids=["all-sms", "refit-sms-16"])
def test_the_standby_copy_takes_the_refit_while_the_other_serves(
    case: LiveCase, refit_sms: int | None
) -> None:
    """serving/standby.py on real engines: the standby copy is refitted and verified while the serving copy
    keeps answering with the old checkpoint; promoted, it answers with the new one, and the two copies
    compute bit for bit alike. With `refit_sms`, each copy's stream lives in a green context of its own."""
    import torch

    from trtrefit.serving import streams
    from trtrefit.serving.standby import StandbyPair
    from trtrefit.serving.tensorrt import TensorRTLive

    if case.name == "vit_b_16" or (refit_sms is not None and case.name != "partitioned"):
        pytest.skip("the partitioned program (both ways) and resnet50 cover it; each copy primes for seconds")
    partition = streams.use_partition("cuda", refit_sms)
    try:
        if partition is not None and refit_sms is not None:
            total = torch.cuda.get_device_properties(0).multi_processor_count
            assert refit_sms <= partition.refit_sms < partition.total_sms == total
        pair = StandbyPair(lambda: TensorRTLive(case.engine, str(case.engine), case.source, "cuda"))
        for _ in range(2):  # both copies primed on A
            pair.load(pair.stage(case.checkpoints["A"]))
            pair.promote()
        served_a = check_serves(case, pair, "A")
        standby_a = pair.verify_run(case.inputs)
        assert all(torch.equal(x, y) for x, y in zip(served_a, standby_a, strict=True))
        pair.load(pair.stage(case.checkpoints["B"]))
        check_serves(case, pair, "A")  # the standby's refit left what serves untouched
        report = verify(pair.verify_run(case.inputs), case.expected["B"], case.tolerances)
        assert report.verification.passed, report.message
        _, promote_s = timed(pair.promote)
        check_serves(case, pair, "B")
        record(case, test="standby", refit_sms=refit_sms, promote_s=promote_s)
    finally:
        streams.use_partition("cuda", None)
