"""The `trtrefit` command. Each area registers its own subcommands; heavy imports (torch, kopf) happen
only inside the command that needs them, so `trtrefit crd` or `trtrefit operator` never load torch."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from trtrefit import __version__


def build_parser() -> argparse.ArgumentParser:
    from trtrefit.api.commands import add_crd_parser
    from trtrefit.controller.commands import add_operator_parser
    from trtrefit.serving.commands import add_serve_parser
    from trtrefit.worker.commands import add_checkpoint_parser, add_compile_parser, add_refit_parser

    parser = argparse.ArgumentParser(prog="trtrefit", description=__doc__)
    parser.add_argument("--version", action="version", version=f"trtrefit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_compile_parser(sub)
    add_refit_parser(sub)
    add_checkpoint_parser(sub)
    add_operator_parser(sub)
    add_serve_parser(sub)
    add_crd_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
