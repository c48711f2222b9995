"""URIs may carry credentials (userinfo, presigned query strings): everything we write (status, Events,
annotations, results, manifests, logs, metrics labels) shows them without."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit


def redact_uri(uri: str) -> str:
    """`s3://key:secret@bucket/k?X-Amz-Signature=...` -> `s3://bucket/k?REDACTED`."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable URI>"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = "REDACTED" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str, uris: Iterable[str]) -> str:
    """`text` with every occurrence of each URI replaced by its redacted form."""
    for uri in sorted(set(uris), key=len, reverse=True):
        redacted = redact_uri(uri)
        if redacted != uri:
            text = text.replace(uri, redacted)
    return text
