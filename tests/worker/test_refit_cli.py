"""`trtrefit refit` end to end on the CPU (exported backend): the real command line, artifacts on a real
S3 server and local paths, the result as the last stdout line, exit codes, and nothing published on any
failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.worker.conftest import S3, Bundle, HttpFiles
from trtrefit.api.result import Outcome, RefitPath, RefitResult
from trtrefit.worker.__main__ import main
from trtrefit.worker.storage import hash_file

TOLERANCES = ["--rtol", "1e-4", "--atol", "1e-4", "--min-cosine-similarity", "0.9999"]


def refit(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, RefitResult, str]:
    code = main(["refit", *args, *TOLERANCES, "--termination-log", "/nonexistent/termination-log"])
    out, err = capsys.readouterr()
    return code, RefitResult.from_json(out.strip().splitlines()[-1]), err


def local_args(bundle: Bundle, checkpoint: Path, publish: Path) -> list[str]:
    return ["--engine", str(bundle.engine), "--source", str(bundle.source), "--checkpoint", str(checkpoint),
            "--inputs", str(bundle.inputs), "--publish", str(publish)]  # fmt: skip


def test_a_good_checkpoint_is_refitted_verified_and_published(
    capsys: pytest.CaptureFixture[str], bundle: Bundle, tmp_path: Path
) -> None:
    code, result, err = refit(capsys, *local_args(bundle, bundle.jitter, tmp_path / "out"))
    assert code == 0, result.message
    assert result.outcome is Outcome.PASSED
    assert (result.backend, result.path) == ("exported", RefitPath.EXPORTED)
    assert result.verification is not None and result.verification.passed
    assert result.engine is not None
    digest, _ = hash_file(tmp_path / "out" / f"{result.engine.sha256}.ep")
    assert digest == result.engine.sha256
    manifest = json.loads((tmp_path / "out" / f"{result.engine.sha256}.json").read_text())
    assert manifest["artifacts"]["checkpoint"]["sha256"] == hash_file(bundle.jitter)[0]
    assert set(result.timings) >= {"fetch", "check", "refit", "verify", "publish", "total"}
    for stage in ("[fetch]", "[check]", "[refit]", "[verify]", "[publish]"):
        assert stage in err


def test_the_published_engine_carries_the_new_weights(
    capsys: pytest.CaptureFixture[str], bundle: Bundle, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from trtrefit.worker.programs import load_program

    code, result, _ = refit(capsys, *local_args(bundle, bundle.good, tmp_path))
    assert code == 0 and result.engine is not None
    published = load_program(tmp_path / f"{result.engine.sha256}.ep", "published")
    expected = load_file(str(bundle.good))
    assert all(published.state_dict[k].equal(v) for k, v in expected.items())


def test_wrong_shape_is_an_error_naming_file_and_key(
    capsys: pytest.CaptureFixture[str], bundle: Bundle, tmp_path: Path
) -> None:
    code, result, err = refit(capsys, *local_args(bundle, bundle.wrong_shape, tmp_path / "out"))
    assert code == 1
    assert result.outcome is Outcome.ERROR
    uri = bundle.wrong_shape.as_uri()
    assert result.message == f"checkpoint {uri}: key '8.weight' shape [9, 32] does not match engine [10, 32]"
    assert f"[error] {result.message}" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("checkpoint", "why"),
    [
        ("nonfinite", "output_0: the reference output holds NaN/inf"),
        ("zero_head", "output_0: the reference output is constant (0 everywhere), nothing to verify"),
    ],
)
def test_failed_verification_exits_2_and_publishes_nothing(
    capsys: pytest.CaptureFixture[str], bundle: Bundle, tmp_path: Path, checkpoint: str, why: str
) -> None:
    code, result, _ = refit(capsys, *local_args(bundle, getattr(bundle, checkpoint), tmp_path / "out"))
    assert code == 2
    assert result.outcome is Outcome.VERIFICATION_FAILED
    assert why in result.message, result.message
    assert result.message.endswith("; nothing published"), result.message
    assert result.engine is None
    assert result.verification is not None and not result.verification.passed
    assert not (tmp_path / "out").exists()


def test_drift_beyond_tolerance_between_engine_and_reference_fails(
    capsys: pytest.CaptureFixture[str], bundle: Bundle, tmp_path: Path
) -> None:
    """The engine program and the source disagree (a source exported from a different version of the
    model with the same weights' names): the refit must not pass."""
    import torch

    from trtrefit.worker.programs import quiet_torch, save_program
    from trtrefit.worker.samples import build

    drifted = build("trtrefit.worker.samples:small_cnn", 0)
    assert isinstance(drifted, torch.nn.Sequential)
    setattr(drifted[4], "eps", 0.5)  # noqa: B010  # a BatchNorm's eps, set after construction
    with quiet_torch():
        save_program(torch.export.export(drifted, (torch.randn(4, 3, 32, 32),)), tmp_path / "drifted.pt2")
    args = local_args(bundle, bundle.good, tmp_path / "out")
    args[args.index("--source") + 1] = str(tmp_path / "drifted.pt2")
    code, result, _ = refit(capsys, *args)
    assert code == 2
    assert "exceeds atol" in result.message
    assert not (tmp_path / "out").exists()


def test_everything_over_s3_with_pinned_digests(
    capsys: pytest.CaptureFixture[str], bundle: Bundle, s3: S3
) -> None:
    engine = s3.put("resnet/engine.ep", bundle.engine)
    source = s3.put("resnet/source.pt2", bundle.source)
    inputs = s3.put("resnet/inputs.safetensors", bundle.inputs)
    checkpoint = s3.put("ckpt/step-1200.safetensors", bundle.jitter)
    code, result, _ = refit(
        capsys,
        *["--engine", engine, "--engine-sha256", hash_file(bundle.engine)[0], "--source", source],
        *["--checkpoint", checkpoint, "--checkpoint-sha256", hash_file(bundle.jitter)[0]],
        *["--inputs", inputs, "--publish", f"s3://{s3.bucket}/resnet/refits/"],
    )
    assert code == 0, result.message
    assert result.engine is not None
    assert result.engine.uri == f"s3://{s3.bucket}/resnet/refits/{result.engine.sha256}.ep"
    assert s3.keys("resnet/refits/") == [
        f"resnet/refits/{result.engine.sha256}.{ext}" for ext in ("ep", "json")
    ]


def test_a_digest_mismatch_publishes_nothing(
    capsys: pytest.CaptureFixture[str], bundle: Bundle, s3: S3
) -> None:
    checkpoint = s3.put("ckpt.safetensors", bundle.good)
    code, result, _ = refit(
        capsys,
        *["--engine", str(bundle.engine), "--source", str(bundle.source), "--inputs", str(bundle.inputs)],
        *[
            "--checkpoint",
            checkpoint,
            "--checkpoint-sha256",
            "ab" * 32,
            "--publish",
            f"s3://{s3.bucket}/out/",
        ],
    )
    assert code == 1
    assert result.message.startswith(f"{checkpoint}: sha256 ")
    assert result.message.endswith(f"does not match the pinned {'ab' * 32}")
    assert result.transient is None  # another Job would read the same bytes: wait for a change
    assert s3.keys("out/") == []


def test_a_truncated_download_publishes_nothing(
    capsys: pytest.CaptureFixture[str], bundle: Bundle, http_files: HttpFiles, tmp_path: Path
) -> None:
    uri = http_files.add("ckpt.safetensors", bundle.good.read_bytes(), mode="truncate")
    args = local_args(bundle, bundle.good, tmp_path / "out")
    args[args.index("--checkpoint") + 1] = uri
    code, result, _ = refit(capsys, *args)
    assert code == 1
    assert result.message.startswith(f"{uri}: download failed after 4 attempts")
    assert result.transient is True  # still failing after the worker's retries: worth another Job
    assert not (tmp_path / "out").exists()


def test_checkpoint_as_exported_program_needs_no_source(
    capsys: pytest.CaptureFixture[str], bundle: Bundle, tmp_path: Path
) -> None:
    code, result, _ = refit(
        capsys,
        *["--engine", str(bundle.engine), "--checkpoint", str(bundle.program_checkpoint)],
        *["--generate-inputs", '[{"shape": [4, 3, 32, 32]}]', "--seed", "7", "--publish", str(tmp_path)],
    )
    assert code == 0, result.message


def test_inputs_the_engine_cannot_take_are_a_clear_error(
    capsys: pytest.CaptureFixture[str], bundle: Bundle, tmp_path: Path
) -> None:
    args = local_args(bundle, bundle.good, tmp_path / "out")
    args[args.index("--inputs") : args.index("--inputs") + 2] = [
        "--generate-inputs",
        '[{"shape": [2, 3, 32, 32]}]',
    ]
    code, result, _ = refit(capsys, *args)
    assert code == 1
    assert result.message.startswith(
        "the refitted engine does not run on the inputs ([2, 3, 32, 32] float32): "
    )


def test_weights_only_pickle_checkpoint(
    capsys: pytest.CaptureFixture[str], bundle: Bundle, tmp_path: Path
) -> None:
    code, result, _ = refit(capsys, *local_args(bundle, bundle.pickle_checkpoint, tmp_path))
    assert code == 0, result.message


def test_a_bare_state_dict_without_source_is_refused(
    capsys: pytest.CaptureFixture[str], bundle: Bundle, tmp_path: Path
) -> None:
    args = local_args(bundle, bundle.good, tmp_path / "out")
    del args[args.index("--source") : args.index("--source") + 2]
    code, result, _ = refit(capsys, *args)
    assert code == 1
    assert result.message.startswith(f"checkpoint {bundle.good.as_uri()} is a bare state_dict: pass --source")


def test_bad_options_still_end_in_a_result(
    capsys: pytest.CaptureFixture[str], bundle: Bundle, tmp_path: Path
) -> None:
    args = local_args(bundle, bundle.good, tmp_path)
    args[args.index("--inputs") : args.index("--inputs") + 2] = ["--generate-inputs", "[{]"]
    code, result, _ = refit(capsys, *args)
    assert code == 1
    assert result.message.startswith("--generate-inputs: not JSON")


def test_the_installed_command_writes_the_termination_log(bundle: Bundle, tmp_path: Path) -> None:
    """A real process, as in the Job's pod: result on stdout's last line and in the termination log."""
    log = tmp_path / "termination-log"
    command = [
        sys.executable,
        "-m",
        "trtrefit.worker",
        "refit",
        *local_args(bundle, bundle.good, tmp_path / "out"),
    ]
    command += [*TOLERANCES, "--termination-log", str(log)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "operator")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240, check=False)
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert RefitResult.from_json(last).outcome is Outcome.PASSED
    assert log.read_text() == last


def test_an_artifact_over_the_size_limit_is_refused_and_nothing_published(
    capsys: pytest.CaptureFixture[str], bundle: Bundle, tmp_path: Path
) -> None:
    args = local_args(bundle, bundle.good, tmp_path / "out")
    code, result, _ = refit(capsys, *args, "--max-artifact-bytes", "1Ki")
    assert code == 1 and result.outcome is Outcome.ERROR
    assert "over the 1024-byte limit per artifact" in result.message
    assert not (tmp_path / "out").exists()


def test_a_presigned_query_never_reaches_the_log_the_result_or_the_manifest(
    capsys: pytest.CaptureFixture[str], bundle: Bundle, http_files: HttpFiles, tmp_path: Path
) -> None:
    secret = "X-Amz-Signature=s3cr3t"
    good = http_files.add(f"good.safetensors?{secret}", bundle.good.read_bytes())
    wrong = http_files.add(f"wrong.safetensors?{secret}", bundle.wrong_shape.read_bytes())
    args = local_args(bundle, bundle.good, tmp_path / "out")
    code, result, err = refit(capsys, *args, "--checkpoint", good)
    assert code == 0 and result.engine is not None and result.checkpoint is not None
    assert result.checkpoint.uri == good.replace(secret, "REDACTED")
    manifest = (tmp_path / "out" / f"{result.engine.sha256}.json").read_text()
    assert "s3cr3t" not in err + result.to_json() + manifest and "REDACTED" in manifest
    code, result, err = refit(capsys, *local_args(bundle, bundle.good, tmp_path / "x"), "--checkpoint", wrong)
    assert code == 1 and "does not match engine" in result.message
    assert "s3cr3t" not in err + result.to_json()
