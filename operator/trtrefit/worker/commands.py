"""argparse wiring for `trtrefit refit`, `trtrefit compile` and `trtrefit checkpoint`. Nothing heavy is
imported here: the operator image has no torch, and `trtrefit crd` must stay fast."""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trtrefit.api.redact import redact_text
from trtrefit.api.request import RefitRequest
from trtrefit.api.result import Outcome, RefitResult, exit_code
from trtrefit.helptext import TOLERANCES, URI_SCHEMES, missing_extra
from trtrefit.logs import add_log_format_argument, configure
from trtrefit.worker.errors import WorkerError

DEFAULT_TERMINATION_LOG = "/dev/termination-log"
TERMINATION_LOG_ENV = "TRTREFIT_TERMINATION_LOG"
Subparsers = Any  # argparse's _SubParsersAction is private; the callers pass what add_subparsers returned
_log = logging.getLogger("trtrefit.worker")


def add_refit_parser(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "refit",
        help="refit an engine with a new checkpoint, verify it against PyTorch, publish it",
        description="fetch -> check -> refit -> verify -> publish. Give the refit as one JSON request "
        "(--request, what the operator's Job passes) or as the flags below, which build the same request. "
        "The last stdout line is the JSON result; exit 0 passed, 1 error, 2 verification failed (nothing "
        "published unless 0).",
        epilog=f"{TOLERANCES}\n\n{URI_SCHEMES}\n\nexample:\n"
        "  trtrefit refit --engine s3://models/m/engine.ep "
        "--source s3://models/m/source.pt2 \\\n    --checkpoint s3://ckpt/m/step-1200.safetensors "
        "--publish s3://models/m/refits/",
    )
    parser.add_argument(
        "--request", metavar="JSON|@FILE", help="a RefitRequest (trtrefit.dev/refit-request-v1) as JSON"
    )
    flags = parser.add_argument_group("the request as flags (instead of --request)")
    flags.add_argument("--engine", metavar="URI", help="refittable program (.ep) from `trtrefit compile`")
    flags.add_argument(
        "--engine-sha256", metavar="HEX", help="pinned digest of the engine (default: unpinned)"
    )
    flags.add_argument(
        "--source",
        metavar="URI",
        help="torch.export program before compiling (.pt2); the PyTorch reference, and needed when the "
        "checkpoint is a bare state_dict (default: none)",
    )
    flags.add_argument("--source-sha256", metavar="HEX", help="pinned digest of the source program")
    flags.add_argument(
        "--checkpoint",
        metavar="URI",
        help="new weights: .safetensors (preferred), .pt2/.ep or .pt state_dict",
    )
    flags.add_argument("--checkpoint-sha256", metavar="HEX", help="pinned digest of the checkpoint")
    flags.add_argument(
        "--inputs",
        metavar="URI",
        help="verification inputs: safetensors with input_0, input_1, ... (with neither --inputs nor "
        "--generate-inputs, inputs are generated from the source program's input signature, seed 0)",
    )
    flags.add_argument("--inputs-sha256", metavar="HEX", help="pinned digest of the inputs file")
    flags.add_argument(
        "--generate-inputs",
        metavar="JSON",
        help='random verification inputs instead of --inputs, e.g. [{"shape": [8, 3, 224, 224], '
        '"dtype": "float32"}]',
    )
    flags.add_argument(
        "--seed", type=int, help="seed for --generate-inputs or the signature's inputs (default 0)"
    )
    flags.add_argument(
        "--rtol", type=float, help="relative tolerance, a fraction of |reference| (default 0.01; see below)"
    )
    flags.add_argument(
        "--atol", type=float, help="absolute tolerance in the output's units (default 0.01; see below)"
    )
    flags.add_argument(
        "--min-cosine-similarity",
        type=float,
        help="smallest cosine similarity of each output with its reference, in [-1, 1] (default 0.999)",
    )
    flags.add_argument(
        "--publish", metavar="URI", help="prefix where <sha256>.ep and its manifest <sha256>.json land"
    )
    flags.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        help="auto: cuda when visible (a TensorRT program needs it), else cpu (default auto)",
    )
    flags.add_argument(
        "--max-artifact-bytes",
        metavar="SIZE",
        help="largest file downloaded, bytes or a quantity such as 20Gi (default 20Gi)",
    )
    flags.add_argument(
        "--refit-path",
        choices=("auto", "fast", "fallback"),
        help="TensorRT engines: fast path with fallback (auto), fast path or fail, or fallback only "
        "(default auto)",
    )
    parser.add_argument(
        "--termination-log",
        # A kubelet without a container filesystem (the e2e suite's) names the file through the environment.
        default=os.environ.get(TERMINATION_LOG_ENV, DEFAULT_TERMINATION_LOG),
        metavar="PATH",
        help=f"where the result JSON also goes (default {DEFAULT_TERMINATION_LOG}, only if it exists)",
    )
    add_log_format_argument(parser)
    parser.set_defaults(func=refit_command)


def add_compile_parser(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "compile",
        help="make the starting bundle: source.pt2, engine.ep, inputs.safetensors, manifest.json",
        description="Export a model (or take an exported program) and compile it into a refittable engine: "
        "Torch-TensorRT on a GPU, a plain lowered torch.export program otherwise. The engine only loads "
        "where TensorRT and the GPU architecture match this machine's (see `trtrefit version`).",
        epilog="example:\n  trtrefit compile --model torchvision.models:resnet50 --input-shape 8,3,224,224 "
        "--output bundle/",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", metavar="MODULE:FUNCTION", help="factory returning a torch.nn.Module")
    what.add_argument("--program", metavar="PATH", help="a torch.export program (.pt2)")
    parser.add_argument(
        "--input-shape",
        action="append",
        required=True,
        metavar="1,3,32,32",
        help="shape of one input, once per input in order; the first dimension is the batch",
    )
    parser.add_argument("--dtype", default="float32", help="element type of the inputs")
    parser.add_argument(
        "--output", required=True, metavar="DIR", help="where source.pt2, engine.ep, inputs and manifest go"
    )
    parser.add_argument(
        "--backend",
        choices=("auto", "exported", "tensorrt"),
        default="auto",
        help="auto: tensorrt when CUDA and torch_tensorrt are there, else exported (CPU)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the model's weights and the inputs")
    add_log_format_argument(parser)
    parser.set_defaults(func=compile_command)


def add_checkpoint_parser(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "checkpoint",
        help="write a safetensors checkpoint of a model factory (for demos and tests)",
        description="Weights of MODULE:FUNCTION built with --seed, optionally perturbed: jitter (every "
        "float tensor, BatchNorm statistics included), wrong-shape, nonfinite.",
    )
    parser.add_argument(
        "--model", required=True, metavar="MODULE:FUNCTION", help="factory returning a torch.nn.Module"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed for the model's weights")
    parser.add_argument(
        "--perturb",
        choices=("none", "jitter", "wrong-shape", "nonfinite"),
        default="none",
        help="how to spoil the weights (to see a refit or a verification fail)",
    )
    parser.add_argument("--output", required=True, metavar="FILE.safetensors", help="where to write it")
    add_log_format_argument(parser)
    parser.set_defaults(func=checkpoint_command)


def refit_command(args: argparse.Namespace) -> int:
    configure(args.log_format)
    try:
        from trtrefit.worker.progress import Progress
    except ModuleNotFoundError as exc:  # fsspec: the worker extra is missing
        return _missing(exc, args.termination_log)
    progress = Progress()
    try:
        result = _refit(args, progress)
    except WorkerError as exc:
        progress.say("error", exc.message)
        result = RefitResult(
            outcome=Outcome.ERROR,
            message=exc.message,
            transient=exc.transient or None,
            timings={"total": progress.total()},
        )
    except Exception as exc:  # the CLI boundary: a bug must still end in a result and exit 1
        message = missing_extra(exc, "refit")
        if message is not None:
            progress.say("error", message)
        else:
            _log.exception("internal error", extra={"stage": "error"})
            message = f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())}"
        result = RefitResult(outcome=Outcome.ERROR, message=message, timings={"total": progress.total()})
    emit(result, args.termination_log, progress.hidden)
    return exit_code(result.outcome)


def _missing(exc: ModuleNotFoundError, termination_log: str) -> int:
    message = missing_extra(exc, "refit")
    if message is None:
        raise exc
    _log.error(message, extra={"stage": "error"})
    result = RefitResult(outcome=Outcome.ERROR, message=message)
    emit(result, termination_log)
    return exit_code(result.outcome)


def _refit(args: argparse.Namespace, progress: Any) -> RefitResult:
    from trtrefit.worker.refit import run_refit

    request = request_from_args(args)
    with tempfile.TemporaryDirectory(prefix="trtrefit-") as workdir:
        result: RefitResult = run_refit(request, Path(workdir), progress)
    return result


_REQUIRED_FLAGS = ("engine", "checkpoint", "publish")
_REQUEST_FLAGS = (
    *_REQUIRED_FLAGS,
    *("rtol", "atol", "min_cosine_similarity"),
    *("engine_sha256", "source", "source_sha256", "checkpoint_sha256", "inputs", "inputs_sha256"),
    *("generate_inputs", "seed", "device", "refit_path", "max_artifact_bytes"),
)


def request_from_args(args: argparse.Namespace) -> RefitRequest:
    """The RefitRequest of `--request`, or the one the flags describe; one clear line when incomplete."""
    given = [name for name in _REQUEST_FLAGS if getattr(args, name) is not None]
    if args.request is not None:
        if given:
            raise WorkerError(
                f"--request: give the refit as a request or as flags, not both (also --{given[0]})"
            )
        return parse_request(read_text_argument(args.request, "--request"), "--request")
    missing = [f"--{name.replace('_', '-')}" for name in _REQUIRED_FLAGS if getattr(args, name) is None]
    if missing:
        raise WorkerError(f"refit: missing {', '.join(missing)} (or give the whole refit as --request JSON)")
    if args.inputs is not None and args.generate_inputs is not None:
        raise WorkerError("refit: give at most one of --inputs and --generate-inputs")
    # Unset tolerances and inputs take the request's defaults (inputs from the program's signature).
    tolerances = {"rtol": args.rtol, "atol": args.atol, "minCosineSimilarity": args.min_cosine_similarity}
    verify: dict[str, Any] = {key: value for key, value in tolerances.items() if value is not None}
    if args.inputs is not None:
        verify["inputs"] = _artifact(args.inputs, args.inputs_sha256, "--inputs-sha256")
    elif args.generate_inputs is not None:
        verify["generate"] = _json(args.generate_inputs, "--generate-inputs")
    if args.seed is not None:
        verify["seed"] = args.seed
    body: dict[str, Any] = {
        "engine": _artifact(args.engine, args.engine_sha256, "--engine-sha256"),
        "checkpoint": _artifact(args.checkpoint, args.checkpoint_sha256, "--checkpoint-sha256"),
        "verify": verify,
        "publish": {"uri": as_uri(args.publish)},
        "device": args.device or "auto",
        "refitPath": args.refit_path or "auto",
    }
    if args.source is not None:
        body["source"] = _artifact(args.source, args.source_sha256, "--source-sha256")
    if args.max_artifact_bytes is not None:
        from trtrefit.worker.storage import parse_byte_size

        body["maxArtifactBytes"] = parse_byte_size("--max-artifact-bytes", args.max_artifact_bytes)
    return parse_request(json.dumps(body), "refit flags")


def _artifact(uri: str, digest: str | None, option: str) -> dict[str, str]:
    from trtrefit.worker.storage import check_digest_format

    pinned = check_digest_format(option, digest)
    return {"uri": as_uri(uri), "sha256": pinned} if pinned else {"uri": as_uri(uri)}


def as_uri(value: str) -> str:
    """A flag's URI; a plain path on the command line means a local file."""
    return value if "://" in value else Path(value).resolve().as_uri()


def _json(text: str, option: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkerError(f"{option}: not JSON: {exc}") from exc


def read_text_argument(value: str, option: str) -> str:
    """An argument given inline or as @FILE."""
    if not value.startswith("@"):
        return value
    try:
        return Path(value[1:]).read_text()
    except OSError as exc:
        raise WorkerError(f"{option} {value}: cannot read the file: {exc.strerror}") from exc


def parse_request(text: str, label: str) -> RefitRequest:
    """A RefitRequest from JSON, or one line naming the first field that is wrong."""
    from pydantic import ValidationError

    try:
        return RefitRequest.model_validate_json(text)
    except ValidationError as exc:
        raise WorkerError(f"{label}: {validation_summary(exc)}") from exc


def validation_summary(exc: Any) -> str:
    """The first error of a pydantic ValidationError as `field.path: message` (and how many more)."""
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "request"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"


def emit(result: RefitResult, termination_log: str, hidden: Sequence[str] = ()) -> None:
    """Result JSON as the last stdout line, and into the termination log where one is expected; the
    `hidden` URIs appear without their credentials (also in a message the pipeline did not write)."""
    text = redact_text(result.to_json(), hidden)
    print(text, flush=True)
    path = Path(termination_log)
    wanted = path.exists() if termination_log == DEFAULT_TERMINATION_LOG else path.parent.is_dir()
    if not wanted:
        return
    try:
        path.write_text(text)
    except OSError as exc:
        _log.warning(f"could not write {path}: {exc}", extra={"stage": "result"})


def compile_command(args: argparse.Namespace) -> int:
    configure(args.log_format)
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
        _log.error(f"error: {exc.message}", extra={"stage": "compile"})
        return 1
    print(manifest, flush=True)
    return 0


def checkpoint_command(args: argparse.Namespace) -> int:
    configure(args.log_format)
    from trtrefit.worker.samples import write_checkpoint

    try:
        write_checkpoint(args.model, args.seed, args.perturb, Path(args.output))
    except WorkerError as exc:
        _log.error(f"error: {exc.message}", extra={"stage": "checkpoint"})
        return 1
    _log.info(f"wrote {args.output}", extra={"stage": "checkpoint"})
    return 0
