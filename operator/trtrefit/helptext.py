"""What every `trtrefit ... --help` shares: a formatter that shows defaults, the text that explains the
verification tolerances and the URI schemes, and the one line a missing optional extra gets."""

from __future__ import annotations

import argparse

URI_SCHEMES = """\
artifact URIs:
  file:///abs/path or a plain path   read in place, hashed, never copied
  http:// https://                   streamed download; read-only (cannot be a --publish target)
  s3://bucket/key                    s3fs; credentials and endpoint from the standard AWS variables
                                     (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...)
  gs://bucket/key                    gcsfs (pip install 'trtrefit[gcs]'); Google default credentials
  Every download is streamed, sha256-checked when pinned and bounded by --max-artifact-bytes.
  Credentials in a URI (user:password@, presigned queries) never appear in logs or results."""

TOLERANCES = """\
verification (the refitted program vs. the source program run in PyTorch on the same new weights):
  An output passes when every element satisfies |actual - reference| <= atol + rtol * |reference|
  (torch.allclose), the cosine similarity of the flattened outputs is at least
  --min-cosine-similarity, and both are finite. A reference whose elements are all equal fails:
  comparing constants proves nothing. TRTModel defaults: rtol 0.01, atol 0.01, cosine 0.999.
  --rtol   relative part of the bound, a fraction of |reference| (0.01 = 1 %)
  --atol   absolute part of the bound, in the output's units; what counts for near-zero outputs
  --min-cosine-similarity  in [-1, 1], 1 = the same direction; catches an output that is wrong
           as a whole while each element stays within the bound (small outputs, loose atol)."""

# Which extra brings which module; `serve` needs the worker extra too.
EXTRAS = {
    "torch": "worker",
    "numpy": "worker",
    "safetensors": "worker",
    "fsspec": "worker",
    "s3fs": "worker",
    "aiohttp": "worker",
    "gcsfs": "gcs",
    "torch_tensorrt": "tensorrt",
    "tensorrt": "tensorrt",
    "fastapi": "serve",
    "uvicorn": "serve",
}


def missing_extra(exc: BaseException, command: str) -> str | None:
    """One line naming the extra to install when `exc` is a missing optional dependency; else None."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    module = exc.name.split(".")[0]
    extra = EXTRAS.get(module)
    if extra is None:
        return None
    if command == "serve" and extra in ("worker", "serve"):
        extra = "worker,serve"
    return f"trtrefit {command} needs {module}, which is not installed: pip install 'trtrefit[{extra}]'"


class DocsHelpFormatter(argparse.HelpFormatter):
    """A text with line breaks (the epilogs' tables) is printed as written, one without is wrapped; every
    option that has a default says it, unless its help already speaks of its default."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            default is None
            or default is False
            or default == argparse.SUPPRESS
            or "default" in text.lower()
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"
