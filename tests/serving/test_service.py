"""ServingModel in process, on the real exported backend: start-up, hot refits, every kind of bad input
refused with the old outputs still served (never promoted), supersede, and the refusal of another
engine."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from localcluster import free_port
from tests.serving.conftest import SHAPE, Bundle, HeldFiles, eager
from trtrefit.api.result import Outcome
from trtrefit.serving.live import LiveProgram
from trtrefit.serving.service import InputError, NotReadyError, ServingModel, StartupError
from trtrefit.worker.formats import TensorSpec

X = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
STAGES = ("fetch", "check", "stage", "reference", "wait", "lock", "apply", "verify", "total")


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.allclose(a, b, atol=1e-5, rtol=1e-4))


def test_start_serves_the_checkpoint_verified(model: ServingModel, bundle: Bundle) -> None:
    (out,) = model.infer([X])
    assert close(out, eager(bundle.checkpoints["a"])(X))
    state = model.state()
    assert state.ready and state.backend == "exported" and state.checkpoint is not None
    assert state.checkpoint.key == "aaaa0000" and state.checkpoint.uri == bundle.checkpoints["a"].as_uri()
    assert state.serves("aaaa0000")
    assert [m.shape for m in model.inputs] == [SHAPE] and [m.shape for m in model.outputs] == [(4, 10)]


def test_start_verifies_both_copies_and_a_refit_swaps_them(model: ServingModel, bundle: Bundle) -> None:
    """Start-up refits and verifies both copies to A; a refit to B goes to the standby, which is then
    promoted, while the copy that served keeps A untouched (it becomes the standby)."""
    loaded = model._loaded
    assert loaded is not None
    pair = loaded.live
    serving, standby = pair.serving, pair.standby
    assert serving is not standby
    want_a = eager(bundle.checkpoints["a"])(X)
    assert close(serving.infer([X])[0], want_a) and close(standby.infer([X])[0], want_a)
    assert model.refit(bundle.request("b", key="bbbb0000")).outcome == Outcome.PASSED
    assert pair.serving is standby and pair.standby is serving
    assert close(pair.serving.infer([X])[0], eager(bundle.checkpoints["b"])(X))
    assert close(pair.standby.infer([X])[0], want_a), "the copy that served was not touched"


def test_start_up_prepares_the_checkpoint_once_for_both_copies(
    bundle: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One fetch, check and reference at start-up, staged into each copy (a spy on prepare, which still
    runs for real)."""
    from trtrefit.serving import service

    calls: list[str] = []
    real = service.prepare  # type: ignore[attr-defined]  # what the module calls, imported there

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append("prepare")
        return real(*args, **kwargs)

    monkeypatch.setattr(service, "prepare", counted)
    model = ServingModel("cnn", tmp_path)
    model.start(bundle.request("a", key="aaaa0000"))
    assert calls == ["prepare"] and model.ready
    loaded = model._loaded
    assert loaded is not None
    want = eager(bundle.checkpoints["a"])(X)
    assert close(loaded.live.serving.infer([X])[0], want) and close(loaded.live.standby.infer([X])[0], want)


def test_refit_sms_needs_a_gpu(bundle: Bundle, tmp_path: Path) -> None:
    with pytest.raises(StartupError, match=r"^--refit-sms 16: the program runs on cpu, not a GPU$"):
        ServingModel("cnn", tmp_path, refit_sms=16).start(bundle.request("a"))


def test_hot_refit_switches_and_reports_every_stage(model: ServingModel, bundle: Bundle) -> None:
    result = model.refit(bundle.request("b", key="bbbb0000"))
    assert result.outcome == Outcome.PASSED, result.message
    assert result.key == "bbbb0000" and result.checkpoint is not None
    assert len(result.checkpoint.sha256) == 64 and result.path is not None and result.path.value == "exported"
    assert set(STAGES) <= set(result.timings), result.timings
    assert result.verification is not None and result.verification.passed
    (out,) = model.infer([X])
    assert close(out, eager(bundle.checkpoints["b"])(X))
    assert not close(out, eager(bundle.checkpoints["a"])(X))
    assert model.state().serves("bbbb0000")


def _bad_requests(bundle: Bundle, tmp: Path) -> dict[str, tuple[Any, str]]:
    dead = f"http://127.0.0.1:{free_port()}/gone.safetensors"
    return {
        "wrong shape": (bundle.request("wrong-shape"), "shape"),
        "missing key": (bundle.request("missing-key"), "missing key '8.bias'"),
        "NaN": (bundle.request("nonfinite"), "non-finite"),
        "digest mismatch": (
            bundle.request("b", checkpoint__sha256="0" * 64),
            "does not match the pinned",
        ),
        "unreachable URI": (bundle.request(dead), dead),
        "not found": (bundle.request((tmp / "nope.safetensors").as_uri()), "not found"),
        "constant outputs": (bundle.request("zero-head"), "constant"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "wrong shape",
        "missing key",
        "NaN",
        "digest mismatch",
        "unreachable URI",
        "not found",
        "constant outputs",
    ],
)
def test_bad_input_is_refused_and_the_old_weights_keep_serving(
    model: ServingModel, bundle: Bundle, tmp_path: Path, case: str
) -> None:
    before = model.state()
    request, says = _bad_requests(bundle, tmp_path)[case]
    result = model.refit(request)
    expected = Outcome.VERIFICATION_FAILED if case == "constant outputs" else Outcome.ERROR
    assert result.outcome == expected, result.message
    assert says in result.message
    (out,) = model.infer([X])
    assert close(out, eager(bundle.checkpoints["a"])(X)), "the old checkpoint must still serve"
    after = model.state()
    assert after.checkpoint == before.checkpoint and after.ready
    assert after.last_refit is not None and after.failed(request.key or "") is not None


class Wrapped:
    """A live program passing every call to a real one; the subclasses below change one thing."""

    def __init__(self, inner: LiveProgram) -> None:
        self.inner, self.backend, self.device = inner, inner.backend, inner.device
        self.applied = 0

    def expected_weights(self) -> dict[str, TensorSpec]:
        return self.inner.expected_weights()

    def stage(self, state: Mapping[str, torch.Tensor]) -> object:
        return self.inner.stage(state)

    def current(self) -> object:
        return self.inner.current()

    def apply(self, staged: object) -> None:
        self.applied += 1
        self.inner.apply(staged)

    def infer(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return self.inner.infer(inputs)

    def run_on(self, stream: torch.cuda.Stream) -> None:
        self.inner.run_on(stream)


class Drifting(Wrapped):
    """Outputs that drift from PyTorch once new weights are applied. A MOCK of a fault the exported
    backend cannot produce (it runs the very graph the reference runs): an engine computing wrongly."""

    def infer(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        drift = 0.5 if self.applied else 0.0
        return [t + drift for t in super().infer(inputs)]


class Held(Wrapped):
    """An apply that waits until released: a slow refit (a real one takes milliseconds, too short to
    issue a request during it on purpose)."""

    def __init__(self, inner: LiveProgram) -> None:
        super().__init__(inner)
        self.entered, self.release = threading.Event(), threading.Event()

    def apply(self, staged: object) -> None:
        self.entered.set()
        assert self.release.wait(60)
        super().apply(staged)


def test_requests_never_wait_for_a_refit(model: ServingModel, bundle: Bundle) -> None:
    """While the standby copy takes a refit, requests are answered by the serving copy (the old weights),
    without waiting; the verified standby then serves."""
    loaded = model._loaded
    assert loaded is not None
    held = Held(loaded.live.standby)
    loaded.live._standby = held
    with ThreadPoolExecutor(2) as pool:
        refit = pool.submit(model.refit, bundle.request("b", key="bbbb0000"))
        assert held.entered.wait(60)
        (out,) = pool.submit(model.infer, [X]).result(timeout=30)  # would wait on a lock the refit held
        assert close(out, eager(bundle.checkpoints["a"])(X))
        assert model.state().refitting == "bbbb0000" and model.state().serves("aaaa0000")
        held.release.set()
        assert refit.result(timeout=60).outcome == Outcome.PASSED
    (out,) = model.infer([X])
    assert close(out, eager(bundle.checkpoints["b"])(X))
    assert loaded.live.serving is held and model.state().serves("bbbb0000")


def test_missed_tolerances_are_never_promoted(model: ServingModel, bundle: Bundle) -> None:
    loaded = model._loaded
    assert loaded is not None
    pair = loaded.live
    serving = pair.serving
    drifting = Drifting(pair.standby)
    pair._standby = drifting
    result = model.refit(bundle.request("b", key="bbbb0000"))
    assert result.outcome == Outcome.VERIFICATION_FAILED
    assert "exceeds atol" in result.message and "the previous weights keep serving" in result.message
    assert result.verification is not None and result.verification.max_abs_error >= 0.4
    assert drifting.applied == 1, "the new weights went to the standby copy once"
    assert pair.serving is serving and pair.standby is drifting, "a failed refit is never promoted"
    (out,) = model.infer([X])
    assert close(out, eager(bundle.checkpoints["a"])(X))
    assert model.state().serves("aaaa0000")


def test_another_engine_needs_new_pods(model: ServingModel, bundle: Bundle, tmp_path: Path) -> None:
    other = tmp_path / "other.ep"
    other.write_bytes(bundle.engine.read_bytes())
    result = model.refit(bundle.request("b", engine={"uri": other.as_uri()}))
    assert result.outcome == Outcome.ERROR and "needs new pods" in result.message
    pinned = model.refit(bundle.request("b", engine__sha256="f" * 64))
    assert pinned.outcome == Outcome.ERROR and "engine" in pinned.message
    assert model.state().serves("aaaa0000")


def test_a_newer_request_supersedes_the_queued_one(
    model: ServingModel, bundle: Bundle, held_files: HeldFiles
) -> None:
    """A runs (its download held back), B waits, C arrives: B is superseded, C runs after A."""
    slow = held_files.add("a.safetensors", bundle.checkpoints["jitter"].read_bytes(), held=True)
    with ThreadPoolExecutor(max_workers=3) as pool:
        first = pool.submit(model.refit, bundle.request(slow, key="11111111"))
        assert held_files.requested.wait(30)
        assert model.state().refitting == "11111111"
        queued = pool.submit(model.refit, bundle.request("b", key="22222222"))
        _until(lambda: model._gate._queued is not None)
        newest = pool.submit(model.refit, bundle.request("a", key="33333333"))
        superseded = queued.result(timeout=30)
        assert superseded.outcome == Outcome.SUPERSEDED and "33333333" in superseded.message
        assert not first.done(), "the running refit is never interrupted"
        held_files.release()
        assert first.result(timeout=60).outcome == Outcome.PASSED
        assert newest.result(timeout=60).outcome == Outcome.PASSED
    assert model.state().serves("33333333")
    (out,) = model.infer([X])
    assert close(out, eager(bundle.checkpoints["a"])(X))


def _until(condition: Any, timeout: float = 30) -> None:
    done = threading.Event()
    for _ in range(int(timeout * 100)):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("condition never held")


def test_inputs_that_do_not_fit_are_refused(model: ServingModel) -> None:
    with pytest.raises(InputError, match="takes 1 input"):
        model.infer([X, X])
    with pytest.raises(InputError, match="dtype float64"):
        model.infer([X.double()])
    with pytest.raises(InputError, match="does not fit"):
        model.infer([X[:, :2]])


def test_not_ready_before_start_and_after_shutdown_begins(bundle: Bundle, tmp_path: Path) -> None:
    serving = ServingModel("cnn", tmp_path)
    assert not serving.ready and serving.state().checkpoint is None
    with pytest.raises(NotReadyError):
        serving.infer([X])
    serving.start(bundle.request("a"))
    serving.begin_shutdown()
    assert not serving.ready and not serving.state().ready
    assert serving.infer([X]), "requests still arriving while the server drains are answered"


@pytest.mark.parametrize(
    ("checkpoint", "says"),
    [("zero-head", "the first refit did not pass (verification_failed)"), ("wrong-shape", "shape")],
)
def test_start_fails_with_one_line(bundle: Bundle, tmp_path: Path, checkpoint: str, says: str) -> None:
    serving = ServingModel("cnn", tmp_path)
    with pytest.raises(StartupError, match=r"^[^\n]*$") as failure:
        serving.start(bundle.request(checkpoint))
    assert says in str(failure.value)
    assert not serving.ready


def test_start_fails_on_an_engine_that_is_not_a_program(bundle: Bundle, tmp_path: Path) -> None:
    bogus = tmp_path / "engine.ep"
    bogus.write_bytes(b"not a zip")
    with pytest.raises(StartupError, match=r"not a torch\.export archive"):
        ServingModel("cnn", tmp_path).start(bundle.request("a", engine={"uri": bogus.as_uri()}))


def test_a_refit_during_start_up_waits_and_lands_after_it(
    bundle: Bundle, tmp_path: Path, held_files: HeldFiles
) -> None:
    """The start-up refit holds the gate: a newer request is applied after it, never before."""
    serving = ServingModel("cnn", tmp_path)
    slow = held_files.add("a.safetensors", bundle.checkpoints["a"].read_bytes(), held=True)
    with ThreadPoolExecutor(max_workers=2) as pool:
        started = pool.submit(serving.start, bundle.request(slow, key="aaaa0000"))
        assert held_files.requested.wait(60)
        newer = pool.submit(serving.refit, bundle.request("b", key="bbbb0000"))
        _until(lambda: serving._gate._queued is not None)
        assert not serving.ready
        held_files.release()
        assert started.result(timeout=60).outcome == Outcome.PASSED
        assert newer.result(timeout=60).outcome == Outcome.PASSED
    assert serving.state().serves("bbbb0000")
