"""`python -m trtrefit.worker refit|compile|checkpoint`: the worker's commands without the operator's
(no kopf, no kubernetes client), for GPU machines and laptops that only have the worker extra."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from trtrefit.worker.commands import add_checkpoint_parser, add_compile_parser, add_refit_parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trtrefit.worker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_refit_parser(sub)
    add_compile_parser(sub)
    add_checkpoint_parser(sub)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
