"""The `trtrefit` command. Each area registers its own subcommands; heavy imports (torch, kopf) happen
only inside the command that needs them, so `trtrefit crd` or `trtrefit operator` never load torch.

`trtrefit COMMAND --help` documents each command: its options with their defaults, the verification
tolerances and the URI schemes where they apply."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from trtrefit import __version__
from trtrefit.helptext import DocsHelpFormatter, missing_extra


class _DocumentedParser(argparse.ArgumentParser):
    """Every subcommand's parser shows its defaults, without each module having to ask for it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DocsHelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from trtrefit.api.commands import add_crd_parser
    from trtrefit.controller.commands import add_operator_parser
    from trtrefit.serving.commands import add_serve_parser
    from trtrefit.versions import add_version_parser
    from trtrefit.worker.commands import add_checkpoint_parser, add_compile_parser, add_refit_parser

    parser = argparse.ArgumentParser(prog="trtrefit", description=__doc__, formatter_class=DocsHelpFormatter)
    parser.add_argument("--version", action="version", version=f"trtrefit {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_DocumentedParser
    )
    add_compile_parser(sub)
    add_refit_parser(sub)
    add_checkpoint_parser(sub)
    add_operator_parser(sub)
    add_serve_parser(sub)
    add_crd_parser(sub)
    add_version_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ModuleNotFoundError as exc:
        line = missing_extra(exc, args.command)
        if line is None:
            raise
        # One line, not a traceback: the image lacks an optional extra (JSON when logs are).
        logging.getLogger("trtrefit").error(line)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
