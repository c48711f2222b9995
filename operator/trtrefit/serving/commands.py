"""argparse wiring for `trtrefit serve`. Nothing heavy is imported until the command runs: `trtrefit crd`
must stay fast and the operator image has no torch."""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from trtrefit.api.request import RefitRequest
from trtrefit.api.serving import DEFAULT_PORT, DESIRED_ENV, TOKEN_ENV
from trtrefit.helptext import TOLERANCES, URI_SCHEMES
from trtrefit.logs import add_log_format_argument, configure

if TYPE_CHECKING:
    from trtrefit.serving.server import ServeOptions

Subparsers = Any  # argparse's _SubParsersAction is private


class ConfigError(ValueError):
    """A flag, file or variable `trtrefit serve` cannot start with: one line naming it."""


def add_serve_parser(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "serve",
        help="serve a program over the Open Inference Protocol v2, refitted live (InPlace rollouts)",
        description="Load the engine a refit request names, refit it to the request's checkpoint, verify "
        "against PyTorch, then serve OIP v2 over HTTP. New checkpoints arrive on POST "
        "/v2/models/MODEL/refit (bearer token). Ready only once a checkpoint is verified.",
        epilog="endpoints: /v2/health/live, /v2/health/ready, /v2/models/MODEL[/ready|/infer], /metrics; "
        "POST /v2/models/MODEL/refit takes a RefitRequest and answers a RefitResult (off without a token)."
        f"\n\n{TOLERANCES}\n\n{URI_SCHEMES}",
    )
    parser.add_argument("--model-name", required=True, metavar="NAME", help="the model's name in OIP paths")
    parser.add_argument(
        "--request",
        metavar="JSON|@FILE",
        help=f"the refit request to serve at start (RefitRequest JSON, or @file); default: ${DESIRED_ENV}",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"HTTP port (default {DEFAULT_PORT})")
    parser.add_argument(
        "--token-file",
        metavar="PATH",
        help=f"bearer token for the refit endpoint; default: ${TOKEN_ENV}; without one the endpoint is off",
    )
    parser.add_argument("--workdir", metavar="DIR", help="where downloads go (default: a temporary folder)")
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=5.0,
        help="after SIGTERM: seconds to keep serving while reporting not ready (default 5)",
    )
    parser.add_argument(
        "--grace-seconds",
        type=float,
        default=30.0,
        help="then: seconds the requests in flight may take to finish (default 30)",
    )
    parser.add_argument(
        "--refit-sms",
        type=int,
        metavar="N",
        help="run a refit's PyTorch work (staging, the reference) on N SMs of its own (CUDA green contexts; "
        "needs cuda-bindings). Default: on every SM, after requests by stream priority",
    )
    add_log_format_argument(parser)
    parser.set_defaults(func=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    configure(args.log_format)
    try:
        request = read_request(args.request, os.environ)
        token = read_token(args.token_file, os.environ)
        check_numbers(args.port, args.drain_seconds, args.grace_seconds)
        if args.refit_sms is not None and args.refit_sms < 1:
            raise ConfigError(f"--refit-sms {args.refit_sms}: give a number of SMs, 1 or more")
    except ConfigError as exc:
        logging.getLogger("trtrefit.serving").error(f"trtrefit serve: {exc}")
        return 2
    from trtrefit.serving.server import run

    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        return run(_options(args, request, token, Path(args.workdir)))
    with tempfile.TemporaryDirectory(prefix="trtrefit-serve-") as workdir:
        return run(_options(args, request, token, Path(workdir)))


def _options(
    args: argparse.Namespace, request: RefitRequest, token: str | None, workdir: Path
) -> ServeOptions:
    from trtrefit.serving.server import ServeOptions

    return ServeOptions(
        model_name=args.model_name,
        request=request,
        host=args.host,
        port=args.port,
        token=token,
        workdir=workdir,
        drain_seconds=args.drain_seconds,
        grace_seconds=args.grace_seconds,
        refit_sms=args.refit_sms,
    )


def read_request(flag: str | None, environ: Mapping[str, str]) -> RefitRequest:
    """The start-up request from --request (JSON or @file) or the environment, validated."""
    if flag:
        where = "--request"
        text = flag
        if flag.startswith("@"):
            path = Path(flag[1:])
            where = f"--request file {path}"
            try:
                text = path.read_text()
            except OSError as exc:
                raise ConfigError(f"{where}: cannot read it: {exc.strerror or exc}") from exc
    elif environ.get(DESIRED_ENV):
        where, text = f"${DESIRED_ENV}", environ[DESIRED_ENV]
    else:
        raise ConfigError(f"no refit request to serve: pass --request JSON|@FILE or set ${DESIRED_ENV}")
    try:
        return RefitRequest.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise ConfigError(f"{where} is not a RefitRequest: {field}: {first['msg']}") from exc


def read_token(path: str | None, environ: Mapping[str, str]) -> str | None:
    """The refit token from --token-file or the environment; None (refit endpoint off) when neither."""
    if path:
        try:
            token = Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--token-file {path}: cannot read it: {exc.strerror or exc}") from exc
        if not token:
            raise ConfigError(f"--token-file {path}: the file is empty")
        return token
    return environ.get(TOKEN_ENV, "").strip() or None


def check_numbers(port: int, drain: float, grace: float) -> None:
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: not a TCP port")
    if drain < 0 or grace < 0:
        raise ConfigError(f"--drain-seconds {drain:g} / --grace-seconds {grace:g}: must be >= 0")
