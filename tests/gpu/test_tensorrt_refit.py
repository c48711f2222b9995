"""The TensorRT backend on a real GPU: compile refittable programs (small_cnn, torchvision resnet50 and
vit_b_16 with trained-looking weights), refit them with different weights (BatchNorm running statistics
changed too) through the real command, and verify against PyTorch. Skipped without CUDA and
torch_tensorrt (tests/gpu/conftest.py)."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from trtrefit.api.result import Outcome, RefitPath, RefitResult
from trtrefit.worker.__main__ import main
from trtrefit.worker.backends import detect
from trtrefit.worker.backends.trt_archive import RECORD_FILE, read_engines, read_record
from trtrefit.worker.compile import CompileRequest, compile_bundle
from trtrefit.worker.samples import write_checkpoint

MODELS = {
    "small_cnn": ("trtrefit.worker.samples:small_cnn", (8, 3, 32, 32)),
    "resnet50": ("trtrefit.worker.samples:resnet50", (8, 3, 224, 224)),
    "vit_b_16": ("trtrefit.worker.samples:vit_b_16", (8, 3, 224, 224)),
}
TOLERANCES = ["--rtol", "1e-2", "--atol", "1e-2", "--min-cosine-similarity", "0.999"]


@dataclass(frozen=True)
class TrtBundle:
    name: str
    dir: Path
    checkpoint: Path
    nonfinite: Path


@pytest.fixture(scope="module", params=list(MODELS))
def trt_bundle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TrtBundle:
    name = request.param
    spec, shape = MODELS[name]
    root = tmp_path_factory.mktemp(name)
    compile_bundle(CompileRequest(output=root, shapes=[shape], backend="tensorrt", model=spec))
    write_checkpoint(spec, 1, "jitter", root / "new.safetensors")
    write_checkpoint(spec, 1, "nonfinite", root / "nonfinite.safetensors")
    return TrtBundle(name, root, root / "new.safetensors", root / "nonfinite.safetensors")


def refit(capsys: pytest.CaptureFixture[str], bundle: TrtBundle, *extra: str, engine: Path | None = None,
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
        *["--publish", str(bundle.dir / "refits"), *TOLERANCES, *extra],
    ]
    code = main(args)
    out, err = capsys.readouterr()
    print(err)
    return code, RefitResult.from_json(out.strip().splitlines()[-1])


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


def test_fast_path_refits_and_verifies(capsys: pytest.CaptureFixture[str], trt_bundle: TrtBundle) -> None:
    code, result = refit(capsys, trt_bundle, "--refit-path", "fast")
    assert code == 0, result.message
    assert result.path is RefitPath.FAST
    assert result.verification is not None and result.verification.min_cosine_similarity > 0.999
    assert result.engine is not None
    assert (trt_bundle.dir / "refits" / f"{result.engine.sha256}.ep").is_file()


def test_an_engine_compiled_without_trtrefit_still_refits(
    capsys: pytest.CaptureFixture[str], trt_bundle: TrtBundle, tmp_path: Path
) -> None:
    """No record: names come from Torch-TensorRT's weight map, eps from the source graph; whatever the
    fast path cannot source goes through refit_module_weights, and the result says which ran."""
    engine = without_record(trt_bundle.dir / "engine.ep", tmp_path / "plain.ep")
    code, result = refit(capsys, trt_bundle, engine=engine)
    assert code == 0, result.message
    assert result.path in (RefitPath.FAST, RefitPath.FALLBACK)
    if trt_bundle.name != "vit_b_16":
        assert result.path is RefitPath.FAST, result.message


def test_fallback_path_refits_and_verifies(capsys: pytest.CaptureFixture[str], trt_bundle: TrtBundle) -> None:
    if trt_bundle.name == "vit_b_16":
        pytest.skip("refit_module_weights on vit_b_16 takes ~30 s; the bench records it")
    code, result = refit(capsys, trt_bundle, "--refit-path", "fallback")
    assert code == 0, result.message
    assert result.path is RefitPath.FALLBACK


def test_a_published_engine_refits_again(capsys: pytest.CaptureFixture[str], trt_bundle: TrtBundle) -> None:
    """The published program keeps the record and stays refittable: it can be the next refit's base."""
    code, first = refit(capsys, trt_bundle, "--refit-path", "fast")
    assert code == 0 and first.engine is not None
    published = trt_bundle.dir / "refits" / f"{first.engine.sha256}.ep"
    assert read_record(published) == read_record(trt_bundle.dir / "engine.ep")
    code, again = refit(
        capsys, trt_bundle, "--refit-path", "fast", engine=published, checkpoint=trt_bundle.checkpoint
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


def test_the_published_program_loads_with_plain_torch_tensorrt(
    capsys: pytest.CaptureFixture[str], trt_bundle: TrtBundle
) -> None:
    """What serving does: torch_tensorrt.load the published file and run it; it matches PyTorch."""
    import torch
    import torch_tensorrt
    from safetensors.torch import load_file

    from trtrefit.worker import programs
    from trtrefit.worker.inputs import load_inputs
    from trtrefit.worker.verify import Tolerances, verify

    code, result = refit(capsys, trt_bundle, "--refit-path", "fast")
    assert code == 0 and result.engine is not None
    published = torch_tensorrt.load(str(trt_bundle.dir / "refits" / f"{result.engine.sha256}.ep"))
    inputs = [t.cuda() for t in load_inputs(trt_bundle.dir / "inputs.safetensors", "inputs")]
    reference = programs.load_program(trt_bundle.dir / "source.pt2", "source")
    programs.swap_weights(reference, load_file(str(trt_bundle.checkpoint)))
    expected = programs.run(programs.to_device(reference, "cuda"), inputs)
    with torch.inference_mode():
        actual = published.module()(*inputs)
    actual = list(actual) if isinstance(actual, (list, tuple)) else [actual]
    report = verify(actual, expected, Tolerances(rtol=1e-2, atol=1e-2, min_cosine_similarity=0.999))
    assert report.verification.passed, report.message
