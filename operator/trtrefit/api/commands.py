"""`trtrefit crd`: print, write or check the generated CustomResourceDefinition."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from trtrefit.api.crd import CRD_PATH, render_crd


def add_crd_parser(subparsers: Any) -> None:
    """Register `crd` on the `trtrefit` subcommands."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "crd",
        help="print the TRTModel CustomResourceDefinition",
        description="Print the TRTModel CRD generated from the API models, or write it, or check a file.",
    )
    parser.add_argument(
        "--output", "-o", type=Path, help=f"write it here (e.g. {CRD_PATH}) instead of stdout"
    )
    parser.add_argument(
        "--check", type=Path, metavar="PATH", help="exit 1 when PATH differs from the generated CRD"
    )
    parser.set_defaults(func=run_crd)


def run_crd(args: argparse.Namespace) -> int:
    text = render_crd()
    if args.check is not None:
        current = args.check.read_text() if args.check.exists() else ""
        if current != text:
            print(
                f"{args.check} is stale: regenerate it with `trtrefit crd --output {args.check}`",
                file=sys.stderr,
            )
            return 1
        return 0
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        return 0
    sys.stdout.write(text)
    return 0
