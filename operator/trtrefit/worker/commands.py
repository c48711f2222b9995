"""argparse wiring for `trtrefit refit`, `trtrefit compile` and `trtrefit checkpoint`. Nothing heavy is
imported here: the operator image has no torch, and `trtrefit crd` must stay fast."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtrefit.api.result import Outcome, RefitResult, exit_code
from trtrefit.worker.errors import WorkerError

if TYPE_CHECKING:
    from trtrefit.worker.verify import Tolerances

DEFAULT_TERMINATION_LOG = "/dev/termination-log"
TERMINATION_LOG_ENV = "TRTREFIT_TERMINATION_LOG"
Subparsers = Any  # argparse's _SubParsersAction is private; the callers pass what add_subparsers returned


def add_refit_parser(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "refit",
        help="refit an engine with a new checkpoint, verify it against PyTorch, publish it",
        description="fetch -> check -> refit -> verify -> publish. The last stdout line is the JSON "
        "result; exit 0 passed, 1 error, 2 verification failed (nothing published unless 0).",
    )
    parser.add_argument("--engine", required=True, metavar="URI", help="refittable program (.ep)")
    parser.add_argument("--engine-sha256", metavar="HEX", help="pinned digest of the engine")
    parser.add_argument("--source", metavar="URI", help="torch.export program before compiling (.pt2)")
    parser.add_argument("--checkpoint", required=True, metavar="URI", help=".safetensors, .pt2/.ep or .pt")
    parser.add_argument("--checkpoint-sha256", metavar="HEX", help="pinned digest of the checkpoint")
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--inputs", metavar="URI", help="safetensors file with input_0, input_1, ...")
    inputs.add_argument(
        "--generate-inputs", metavar="JSON", help='e.g. [{"shape": [8, 3, 224, 224], "dtype": "float32"}]'
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for --generate-inputs (default 0)")
    parser.add_argument("--rtol", type=float, required=True)
    parser.add_argument("--atol", type=float, required=True)
    parser.add_argument("--min-cosine-similarity", type=float, required=True)
    parser.add_argument("--publish", required=True, metavar="URI", help="prefix for <sha256>.ep and .json")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--refit-path",
        choices=("auto", "fast", "fallback"),
        default="auto",
        help="TensorRT engines: fast path with fallback (auto), fast path or fail, or fallback only",
    )
    parser.add_argument(
        "--termination-log",
        # A kubelet without a container filesystem (the e2e suite's) names the file through the environment.
        default=os.environ.get(TERMINATION_LOG_ENV, DEFAULT_TERMINATION_LOG),
        metavar="PATH",
        help=f"where the result JSON also goes (default {DEFAULT_TERMINATION_LOG}, only if it exists)",
    )
    parser.set_defaults(func=refit_command)


def add_compile_parser(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "compile",
        help="make the starting bundle: source.pt2, engine.ep, inputs.safetensors, manifest.json",
        description="Export a model (or take an exported program) and compile it into a refittable engine: "
        "Torch-TensorRT on a GPU, a plain lowered torch.export program otherwise.",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", metavar="MODULE:FUNCTION", help="factory returning a torch.nn.Module")
    what.add_argument("--program", metavar="PATH", help="a torch.export program (.pt2)")
    parser.add_argument("--input-shape", action="append", required=True, metavar="1,3,32,32")
    parser.add_argument("--dtype", default="float32", help="dtype of the inputs (default float32)")
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--backend", choices=("auto", "exported", "tensorrt"), default="auto")
    parser.add_argument("--seed", type=int, default=0, help="seed for the model's weights and the inputs")
    parser.set_defaults(func=compile_command)


def add_checkpoint_parser(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "checkpoint",
        help="write a safetensors checkpoint of a model factory (for demos and tests)",
        description="Weights of MODULE:FUNCTION built with --seed, optionally perturbed: jitter (every "
        "float tensor, BatchNorm statistics included), wrong-shape, nonfinite.",
    )
    parser.add_argument("--model", required=True, metavar="MODULE:FUNCTION")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--perturb", choices=("none", "jitter", "wrong-shape", "nonfinite"), default="none")
    parser.add_argument("--output", required=True, metavar="FILE.safetensors")
    parser.set_defaults(func=checkpoint_command)


def refit_command(args: argparse.Namespace) -> int:
    from trtrefit.worker.progress import Progress

    progress = Progress()
    try:
        result = _refit(args, progress)
    except WorkerError as exc:
        progress.say("error", exc.message)
        result = RefitResult(outcome=Outcome.ERROR, message=exc.message, timings={"total": progress.total()})
    except Exception as exc:  # the CLI boundary: a bug must still end in a result and exit 1
        traceback.print_exc(file=sys.stderr)
        message = f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())}"
        result = RefitResult(outcome=Outcome.ERROR, message=message, timings={"total": progress.total()})
    emit(result, args.termination_log)
    return exit_code(result.outcome)


def _refit(args: argparse.Namespace, progress: Any) -> RefitResult:
    from trtrefit.worker.inputs import parse_specs
    from trtrefit.worker.refit import RefitRequest, run_refit
    from trtrefit.worker.storage import check_digest_format

    request = RefitRequest(
        engine=args.engine,
        checkpoint=args.checkpoint,
        publish=args.publish,
        tolerances=_tolerances(args.rtol, args.atol, args.min_cosine_similarity),
        engine_sha256=check_digest_format("--engine-sha256", args.engine_sha256),
        checkpoint_sha256=check_digest_format("--checkpoint-sha256", args.checkpoint_sha256),
        source=args.source,
        inputs=args.inputs,
        generate_inputs=parse_specs(args.generate_inputs) if args.generate_inputs else None,
        seed=args.seed,
        device=args.device,
        refit_path=args.refit_path,
    )
    with tempfile.TemporaryDirectory(prefix="trtrefit-") as workdir:
        result: RefitResult = run_refit(request, Path(workdir), progress)
    return result


def _tolerances(rtol: float, atol: float, min_cos: float) -> Tolerances:
    from trtrefit.worker.verify import Tolerances

    if not (rtol >= 0 and atol >= 0):
        raise WorkerError(f"--rtol {rtol} / --atol {atol}: tolerances must be >= 0")
    if not -1.0 <= min_cos <= 1.0:
        raise WorkerError(f"--min-cosine-similarity {min_cos}: must lie in [-1, 1]")
    return Tolerances(rtol=rtol, atol=atol, min_cosine_similarity=min_cos)


def emit(result: RefitResult, termination_log: str) -> None:
    """Result JSON as the last stdout line, and into the termination log where one is expected."""
    text = result.to_json()
    print(text, flush=True)
    path = Path(termination_log)
    wanted = path.exists() if termination_log == DEFAULT_TERMINATION_LOG else path.parent.is_dir()
    if not wanted:
        return
    try:
        path.write_text(text)
    except OSError as exc:
        print(f"[result] could not write {path}: {exc}", file=sys.stderr)


def compile_command(args: argparse.Namespace) -> int:
    from trtrefit.worker.compile import CompileRequest, compile_bundle
    from trtrefit.worker.inputs import parse_shape

    try:
        request = CompileRequest(
            output=Path(args.output),
            shapes=[parse_shape(s) for s in args.input_shape],
            dtype=args.dtype,
            backend=args.backend,
            seed=args.seed,
            model=args.model,
            program=Path(args.program) if args.program else None,
        )
        manifest = compile_bundle(request)
    except WorkerError as exc:
        print(f"[compile] error: {exc.message}", file=sys.stderr)
        return 1
    print(manifest, flush=True)
    return 0


def checkpoint_command(args: argparse.Namespace) -> int:
    from trtrefit.worker.samples import write_checkpoint

    try:
        write_checkpoint(args.model, args.seed, args.perturb, Path(args.output))
    except WorkerError as exc:
        print(f"[checkpoint] error: {exc.message}", file=sys.stderr)
        return 1
    print(f"[checkpoint] wrote {args.output}", file=sys.stderr)
    return 0
