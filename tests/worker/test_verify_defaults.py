"""`trtrefit refit` without any verification settings (a TRTModel without spec.verify): the inputs come
from the program's own input signature (seed 0), rtol = atol = 0.01, cosine >= 0.999, and the result says
so. Real exported programs on the CPU; nothing is mocked."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.worker.conftest import Bundle
from trtrefit.api.request import RefitRequest
from trtrefit.api.result import Outcome, RefitResult
from trtrefit.worker.__main__ import main

DEFAULTS_NOTE = "inputs generated from the program signature (seed 0), rtol=0.01 atol=0.01 cosine>=0.999"


def refit(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, RefitResult]:
    code = main(["refit", *args, "--termination-log", "/nonexistent/termination-log"])
    out, _ = capsys.readouterr()
    return code, RefitResult.from_json(out.strip().splitlines()[-1])


def args_for(engine: Path, source: Path, checkpoint: Path, publish: Path) -> list[str]:
    return ["--engine", str(engine), "--source", str(source), "--checkpoint", str(checkpoint),
            "--publish", str(publish)]  # fmt: skip


def test_without_verify_settings_the_signature_inputs_verify_and_the_result_says_so(
    capsys: pytest.CaptureFixture[str], bundle: Bundle, tmp_path: Path
) -> None:
    code, result = refit(capsys, *args_for(bundle.engine, bundle.source, bundle.jitter, tmp_path / "out"))
    assert code == 0, result.message
    assert result.outcome is Outcome.PASSED
    assert DEFAULTS_NOTE in result.message
    assert result.verification is not None and result.verification.passed
    assert result.verification.min_cosine_similarity >= 0.999
    assert result.engine is not None and (tmp_path / "out" / f"{result.engine.sha256}.ep").is_file()


def test_without_verify_settings_a_wrong_refit_is_still_caught(
    capsys: pytest.CaptureFixture[str], bundle: Bundle, tmp_path: Path
) -> None:
    """A source whose BatchNorm eps differs from the engine's: the refitted engine computes something else
    than the reference, and the default tolerances see it."""
    import torch

    from trtrefit.worker.programs import quiet_torch, save_program
    from trtrefit.worker.samples import build

    drifted = build("trtrefit.worker.samples:small_cnn", 0)
    setattr(drifted.get_submodule("4"), "eps", 0.5)  # noqa: B010 (nn.Module attributes are untyped)
    with quiet_torch():
        save_program(torch.export.export(drifted, (torch.randn(4, 3, 32, 32),)), tmp_path / "drifted.pt2")
    code, result = refit(
        capsys, *args_for(bundle.engine, tmp_path / "drifted.pt2", bundle.good, tmp_path / "out")
    )
    assert code == 2, result.message
    assert result.outcome is Outcome.VERIFICATION_FAILED
    assert "exceeds atol 0.01" in result.message and DEFAULTS_NOTE in result.message
    assert not (tmp_path / "out").exists()


def test_a_non_finite_checkpoint_fails_the_default_verification(
    capsys: pytest.CaptureFixture[str], bundle: Bundle, tmp_path: Path
) -> None:
    code, result = refit(capsys, *args_for(bundle.engine, bundle.source, bundle.nonfinite, tmp_path / "out"))
    assert code == 2
    assert "output_0: the reference output holds NaN/inf" in result.message
    assert not (tmp_path / "out").exists()


def _dynamic_program(path: Path, bounded: bool) -> Path:
    import torch

    from trtrefit.worker.programs import quiet_torch, save_program
    from trtrefit.worker.samples import build

    batch = torch.export.Dim("batch", min=1, max=8) if bounded else torch.export.Dim("batch")
    with quiet_torch():
        program = torch.export.export(
            build("trtrefit.worker.samples:small_cnn", 0).eval(),
            (torch.randn(4, 3, 32, 32),),
            dynamic_shapes=({0: batch},),
        )
    save_program(program, path)
    return path


def test_a_dynamic_dimension_without_bounds_is_refused_naming_the_input(
    capsys: pytest.CaptureFixture[str], bundle: Bundle, tmp_path: Path
) -> None:
    program = _dynamic_program(tmp_path / "dynamic.pt2", bounded=False)
    code, result = refit(capsys, *args_for(program, program, bundle.good, tmp_path / "out"))
    assert code == 1
    assert result.outcome is Outcome.ERROR
    assert result.message.startswith("verify: program input 0 ('input') dimension 0 is dynamic")
    assert "set spec.verify.inputs or spec.verify.generate, or export the program with bounds" in (
        result.message
    )
    assert not (tmp_path / "out").exists()


def test_a_bounded_dynamic_dimension_takes_its_lower_bound(
    capsys: pytest.CaptureFixture[str], bundle: Bundle, tmp_path: Path
) -> None:
    program = _dynamic_program(tmp_path / "bounded.pt2", bounded=True)
    code, result = refit(capsys, *args_for(program, program, bundle.good, tmp_path / "out"))
    assert code == 0, result.message
    assert DEFAULTS_NOTE in result.message


def _request(engine: Path, source: Path, checkpoint: Path, key: str) -> RefitRequest:
    """A serving pod's refit request (InPlace) without spec.verify: no inputs, default tolerances."""
    return RefitRequest.model_validate(
        {"key": key, "engine": {"uri": engine.as_uri()}, "source": {"uri": source.as_uri()},
         "checkpoint": {"uri": checkpoint.as_uri()}}
    )  # fmt: skip


def test_a_serving_pod_starts_and_refits_with_the_default_verification(
    bundle: Bundle, tmp_path: Path
) -> None:
    """InPlace takes the same request: the server's start-up and its refit endpoint generate the inputs
    from the source program's signature too."""
    from trtrefit.serving.service import ServingModel

    serving = ServingModel("cnn", tmp_path)
    started = serving.start(_request(bundle.engine, bundle.source, bundle.good, "aaaa0000"))
    assert started.outcome is Outcome.PASSED, started.message
    assert started.verification is not None and started.verification.min_cosine_similarity >= 0.999
    refitted = serving.refit(_request(bundle.engine, bundle.source, bundle.jitter, "bbbb0000"))
    assert refitted.outcome is Outcome.PASSED, refitted.message
    assert serving.state().serves("bbbb0000")
    says = "inputs generated from the program signature (seed 0), rtol=0.01 atol=0.01 cosine>=0.999"
    assert says in started.message and says in refitted.message, refitted.message


def test_a_serving_pod_refuses_to_start_on_unbounded_dynamic_shapes_without_inputs(
    bundle: Bundle, tmp_path: Path
) -> None:
    from trtrefit.serving.service import ServingModel, StartupError

    program = _dynamic_program(tmp_path / "dynamic.pt2", bounded=False)
    (tmp_path / "work").mkdir()
    serving = ServingModel("cnn", tmp_path / "work")
    with pytest.raises(StartupError, match=r"program input 0 \('input'\) dimension 0 is dynamic"):
        serving.start(_request(program, program, bundle.good, "aaaa0000"))
    assert not serving.state().ready
