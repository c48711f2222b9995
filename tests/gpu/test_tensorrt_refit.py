"""The TensorRT backend on a real GPU: compile refittable programs (small_cnn, torchvision resnet50 and
vit_b_16 with trained-looking weights), refit them with different weights (BatchNorm running statistics
changed too) through the real command, and verify against PyTorch. Skipped without CUDA and
torch_tensorrt (tests/gpu/conftest.py).

Tolerances are per model because the engine's own arithmetic is what they bound. TensorRT-RTX computes
fp32 convolutions TF32-like: the resnet50 engine as compiled, before any refit, is 0.31 away from a
float64 PyTorch run at outputs up to 405 (these random-statistics resnets produce logits in the
hundreds); refitted, 0.76 at outputs up to 1289 — about 6e-4 of the largest output both times, and the
fast path's outputs are bit for bit those of Torch-TensorRT's own refit (checked below). Exactness of the
refit itself is checked there, not by loosening the verification."""

from __future__ import annotations

import contextlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from trtrefit.api.result import Outcome, RefitPath, RefitResult
from trtrefit.worker.__main__ import main
from trtrefit.worker.backends import detect
from trtrefit.worker.backends.tensorrt.archive import RECORD_FILE, read_engines, read_record
from trtrefit.worker.compile import CompileRequest, compile_bundle
from trtrefit.worker.samples import write_checkpoint

SPECS = "trtrefit.worker.samples"
MODELS = {  # spec, input shape, tolerances
    "small_cnn": (f"{SPECS}:small_cnn", (8, 3, 32, 32), ["1e-2", "1e-2", "0.999"]),
    "resnet50": (f"{SPECS}:resnet50", (8, 3, 224, 224), ["1e-2", "2", "0.99999"]),
    "vit_b_16": (f"{SPECS}:vit_b_16", (8, 3, 224, 224), ["1e-2", "1e-2", "0.99999"]),
}


@dataclass(frozen=True)
class TrtBundle:
    name: str
    dir: Path
    checkpoint: Path
    nonfinite: Path

    @property
    def tolerances(self) -> list[str]:
        rtol, atol, cosine = MODELS[self.name][2]
        return ["--rtol", rtol, "--atol", atol, "--min-cosine-similarity", cosine]


@pytest.fixture(scope="module", params=list(MODELS))
def trt_bundle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TrtBundle:
    name = request.param
    spec, shape, _ = MODELS[name]
    root = tmp_path_factory.mktemp(name)
    compile_bundle(CompileRequest(output=root, shapes=[shape], backend="tensorrt", model=spec))
    write_checkpoint(spec, 1, "jitter", root / "new.safetensors")
    write_checkpoint(spec, 1, "nonfinite", root / "nonfinite.safetensors")
    return TrtBundle(name, root, root / "new.safetensors", root / "nonfinite.safetensors")


def run_refit(bundle: TrtBundle, *extra: str, engine: Path | None = None,
              checkpoint: Path | None = None) -> tuple[int, RefitResult]:  # fmt: skip
    args = [
        "refit",
        *["--engine", str(engine or bundle.dir / "engine.ep"), "--source", str(bundle.dir / "source.pt2")],
        *[
            "--checkpoint",
            str(checkpoint or bundle.checkpoint),
            "--inputs",
            str(bundle.dir / "inputs.safetensors"),
        ],
        *["--publish", str(bundle.dir / "refits"), *bundle.tolerances, *extra],
    ]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(args)
    return code, RefitResult.from_json(out.getvalue().strip().splitlines()[-1])


def refit(capsys: pytest.CaptureFixture[str], bundle: TrtBundle, *extra: str, engine: Path | None = None,
          checkpoint: Path | None = None) -> tuple[int, RefitResult]:  # fmt: skip
    code, result = run_refit(bundle, *extra, engine=engine, checkpoint=checkpoint)
    print(capsys.readouterr().err)
    return code, result


@pytest.fixture(scope="module")
def fast_refit(trt_bundle: TrtBundle) -> tuple[int, RefitResult]:
    """One fast-path refit per model, shared by the tests that only look at what it published."""
    return run_refit(trt_bundle, "--refit-path", "fast")


def published(bundle: TrtBundle, result: RefitResult) -> Path:
    assert result.engine is not None
    return bundle.dir / "refits" / f"{result.engine.sha256}.ep"


def outputs_of(program: Path, bundle: TrtBundle) -> list[object]:
    """What serving does: torch_tensorrt.load the published file and run it on the bundle's inputs."""
    import torch
    import torch_tensorrt

    from trtrefit.worker.inputs import load_inputs

    inputs = [t.cuda() for t in load_inputs(bundle.dir / "inputs.safetensors", "inputs")]
    module = torch_tensorrt.load(str(program)).module()
    with torch.inference_mode():
        actual = module(*inputs)
    return list(actual) if isinstance(actual, (list, tuple)) else [actual]


def without_record(engine: Path, target: Path) -> Path:
    """The same program as plain `torch_tensorrt.save` writes it: no trtrefit record inside."""
    with zipfile.ZipFile(engine) as source, zipfile.ZipFile(target, "w") as copy:
        for item in source.infolist():
            if not item.filename.endswith(f"/extra/{RECORD_FILE}"):
                copy.writestr(item, source.read(item.filename))
    return target


def test_compile_writes_a_refittable_tensorrt_program_with_a_full_record(trt_bundle: TrtBundle) -> None:
    engine = trt_bundle.dir / "engine.ep"
    assert detect(engine, str(engine)) == "tensorrt"
    entries = read_engines(engine, str(engine))
    assert entries and all(e.metadata["settings"] is not None for e in entries)
    record = read_record(engine)
    assert record is not None
    kinds = {
        entry["kind"] for engine_record in record["engines"].values() for entry in engine_record.values()
    }
    assert "unknown" not in kinds, json.dumps(record["engines"])[:2000]


def test_fast_path_refits_and_verifies(trt_bundle: TrtBundle, fast_refit: tuple[int, RefitResult]) -> None:
    code, result = fast_refit
    assert code == 0, result.message
    assert result.path is RefitPath.FAST
    assert result.verification is not None and result.verification.min_cosine_similarity > 0.999
    assert published(trt_bundle, result).is_file()


def test_an_engine_compiled_without_trtrefit_still_refits(
    capsys: pytest.CaptureFixture[str], trt_bundle: TrtBundle, tmp_path: Path
) -> None:
    """No record: names come from Torch-TensorRT's weight map, eps from the source graph; whatever the
    fast path cannot source goes through refit_module_weights, and the result says which ran and why.
    The CNNs are fully sourced from the graph (fast path); vit_b_16's folded class token and attention
    constants are not, so it takes the fallback (~30 s on the H200) and still verifies."""
    engine = without_record(trt_bundle.dir / "engine.ep", tmp_path / "plain.ep")
    assert read_record(engine) is None
    code, result = refit(capsys, trt_bundle, engine=engine)
    assert code == 0, result.message
    assert result.outcome is Outcome.PASSED, result.message
    if trt_bundle.name == "vit_b_16":
        assert result.path is RefitPath.FALLBACK, result.message
        # The worker's note names the fast path's reason (tensorrt.py: "fallback because <reason>").
        assert "fallback because" in result.message, result.message
    else:
        assert result.path is RefitPath.FAST, result.message
        assert "fallback because" not in result.message, result.message


def test_fallback_path_refits_and_the_fast_path_matches_it_bit_for_bit(
    capsys: pytest.CaptureFixture[str], trt_bundle: TrtBundle, fast_refit: tuple[int, RefitResult]
) -> None:
    """refit_module_weights (weight-map cache off) re-runs Torch-TensorRT's converters on the new weights:
    the engine it makes is the ground truth, and the fast path must compute exactly the same."""
    import torch

    if trt_bundle.name == "vit_b_16":
        pytest.skip("refit_module_weights on vit_b_16 takes ~30 s; the bench records it")
    code, result = refit(capsys, trt_bundle, "--refit-path", "fallback")
    assert code == 0, result.message
    assert result.path is RefitPath.FALLBACK
    fast_code, fast = fast_refit
    assert fast_code == 0, fast.message
    stock_out = outputs_of(published(trt_bundle, result), trt_bundle)
    fast_out = outputs_of(published(trt_bundle, fast), trt_bundle)
    assert len(stock_out) == len(fast_out)
    for ours, theirs in zip(fast_out, stock_out, strict=True):
        assert isinstance(ours, torch.Tensor) and isinstance(theirs, torch.Tensor)
        assert torch.equal(ours, theirs), float((ours - theirs).abs().max())


def test_a_published_engine_refits_again(
    capsys: pytest.CaptureFixture[str], trt_bundle: TrtBundle, fast_refit: tuple[int, RefitResult]
) -> None:
    """The published program keeps the record and stays refittable: it can be the next refit's base."""
    code, first = fast_refit
    assert code == 0, first.message
    base = published(trt_bundle, first)
    assert read_record(base) == read_record(trt_bundle.dir / "engine.ep")
    code, again = refit(
        capsys, trt_bundle, "--refit-path", "fast", engine=base, checkpoint=trt_bundle.checkpoint
    )
    assert code == 0, again.message
    assert again.path is RefitPath.FAST


def test_non_finite_weights_fail_verification(
    capsys: pytest.CaptureFixture[str], trt_bundle: TrtBundle
) -> None:
    if trt_bundle.name != "small_cnn":
        pytest.skip("one model is enough")
    code, result = refit(capsys, trt_bundle, checkpoint=trt_bundle.nonfinite)
    assert code == 2
    assert result.outcome is Outcome.VERIFICATION_FAILED
    # The same sentence the CPU backend gives (tests/worker/test_refit_cli.py): the reference is NaN.
    assert "output_0: the reference output holds NaN/inf" in result.message, result.message
    assert "nothing published" in result.message, result.message
    assert result.engine is None
    assert result.verification is not None and result.verification.passed is False


def test_the_published_program_loads_with_plain_torch_tensorrt(
    trt_bundle: TrtBundle, fast_refit: tuple[int, RefitResult]
) -> None:
    """What serving does: torch_tensorrt.load the published file and run it; it matches PyTorch."""
    import torch
    from safetensors.torch import load_file

    from trtrefit.worker import programs
    from trtrefit.worker.inputs import load_inputs
    from trtrefit.worker.refit import exact_fp32
    from trtrefit.worker.verify import Tolerances, verify

    code, result = fast_refit
    assert code == 0, result.message
    actual = outputs_of(published(trt_bundle, result), trt_bundle)
    inputs = [t.cuda() for t in load_inputs(trt_bundle.dir / "inputs.safetensors", "inputs")]
    reference = programs.load_program(trt_bundle.dir / "source.pt2", "source")
    programs.swap_weights(reference, load_file(str(trt_bundle.checkpoint)))
    with exact_fp32("cuda"):
        expected = programs.run(programs.to_device(reference, "cuda"), inputs)
    rtol, atol, cosine = (float(v) for v in MODELS[trt_bundle.name][2])
    tolerances = Tolerances(rtol=rtol, atol=atol, min_cosine_similarity=cosine)
    report = verify([t for t in actual if isinstance(t, torch.Tensor)], expected, tolerances)
    assert report.verification.passed, report.message
