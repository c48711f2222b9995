"""Artifacts by URI through fsspec: `file://` and plain paths, `http(s)://`, `s3://` (s3fs, credentials
and `AWS_ENDPOINT_URL` from the standard AWS environment variables) and `gs://` (gcsfs, imported by
fsspec only when such a URI is used).

Downloads are streamed to a local folder with the sha256 computed on the way and compared with the
pinned digest; transient failures (dropped connections, truncated bodies, 5xx) are retried with
exponential backoff. Publishing writes a temporary key and then moves it to `<prefix>/<sha256>.ep`, so a
reader never sees a half-written engine; the manifest `<sha256>.json` lands after the engine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from trtrefit.api.result import PublishedEngine
from trtrefit.worker.errors import WorkerError

CHUNK_BYTES = 8 * 1024 * 1024
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)

T = TypeVar("T")


@dataclass(frozen=True)
class Retry:
    """How often and how patiently a transient failure is retried (delays double each time)."""

    attempts: int = 4
    first_delay_s: float = 0.5


@dataclass(frozen=True)
class Fetched:
    """A local copy of an artifact (or the artifact itself when it is a local file) and its digest."""

    uri: str
    path: Path
    sha256: str
    size: int


class TruncatedError(OSError):
    """Fewer bytes arrived than the server announced: worth another try."""


def check_digest_format(option: str, digest: str | None) -> str | None:
    """Normalise a pinned digest (optionally `sha256:`-prefixed) or fail naming the option."""
    if digest is None or digest == "":
        return None
    value = digest.lower().removeprefix("sha256:")
    if not SHA256_RE.match(value):
        raise WorkerError(f"{option} {digest!r}: not a sha256 hex digest (64 hex characters)")
    return value


def storage_options(uri: str) -> dict[str, Any]:
    """fsspec options for a URI; for S3 the endpoint comes from AWS_ENDPOINT_URL_S3/AWS_ENDPOINT_URL."""
    scheme = urlsplit(uri).scheme
    if scheme in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}
    return {}


def filesystem(uri: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for a URI, with one clear error for unusable schemes."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(uri, skip_instance_cache=True, **storage_options(uri))
    except ImportError as exc:
        extra = " (pip install 'trtrefit[gcs]')" if uri.startswith(("gs://", "gcs://")) else ""
        raise WorkerError(f"{uri}: no filesystem driver for this scheme{extra}: {exc}") from exc
    except ValueError as exc:
        raise WorkerError(f"{uri}: unsupported URI: {exc}") from exc
    return fs, str(path)


def is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: connection trouble, timeouts, truncated bodies, server-side 5xx/429."""
    if isinstance(exc, _PERMANENT):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError, TruncatedError)):
        return True
    from fsspec.exceptions import FSTimeoutError

    if isinstance(exc, FSTimeoutError):
        return True
    try:
        import aiohttp  # http(s) and s3 only; a machine reading local files may lack it
    except ImportError:
        return isinstance(exc, OSError)
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.status >= 500 or exc.status == 429
    return isinstance(exc, (aiohttp.ClientError, OSError))


def with_retries(uri: str, action: str, step: Callable[[], T], retry: Retry) -> T:
    """Run `step`, retrying transient failures; permanent ones become one WorkerError line."""
    delay = retry.first_delay_s
    for attempt in range(1, retry.attempts + 1):
        try:
            return step()
        except WorkerError:
            raise
        except FileNotFoundError as exc:
            raise WorkerError(f"{uri}: not found") from exc
        except PermissionError as exc:
            raise WorkerError(f"{uri}: access denied ({exc})") from exc
        except Exception as exc:  # classified right below; anything permanent is re-raised as one line
            if not is_transient(exc):
                raise WorkerError(f"{uri}: {action} failed: {_describe(exc)}") from exc
            if attempt == retry.attempts:
                raise WorkerError(
                    f"{uri}: {action} failed after {attempt} attempts: {_describe(exc)}"
                ) from exc
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def hash_file(path: Path) -> tuple[str, int]:
    """(sha256 hex, size) of a local file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _local_name(uri: str) -> str:
    name = Path(urlsplit(uri).path).name or "artifact"
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _download(fs: Any, path: str, target: Path) -> tuple[str, int]:
    expected = _announced_size(fs, path)
    digest = hashlib.sha256()
    size = 0
    # block_size=0 asks HTTP for one streamed response instead of ranged block reads.
    options = {"block_size": 0} if fs.protocol in (("http", "https"), "http", "https") else {}
    with fs.open(path, "rb", **options) as remote, target.open("wb") as local:
        while chunk := remote.read(CHUNK_BYTES):
            digest.update(chunk)
            local.write(chunk)
            size += len(chunk)
    if expected is not None and size != expected:
        raise TruncatedError(f"download truncated: got {size} of {expected} bytes")
    return digest.hexdigest(), size


def _announced_size(fs: Any, path: str) -> int | None:
    size = fs.info(path).get("size")
    return int(size) if isinstance(size, int) else None


def fetch(uri: str, workdir: Path, sha256: str | None = None, retry: Retry | None = None) -> Fetched:
    """Make `uri` available as a local file, checking the pinned sha256 when one is given.

    Local files are hashed in place (no copy); remote ones are streamed into a fresh folder under
    `workdir`. A digest mismatch is permanent and never retried.
    """
    retry = retry or Retry()
    fs, path = filesystem(uri)
    if is_local(fs):
        local = Path(path)
        if not local.is_file():
            raise WorkerError(f"{uri}: not found" if not local.exists() else f"{uri}: not a file")
        digest, size = hash_file(local)
    else:
        local = Path(tempfile.mkdtemp(prefix="fetch-", dir=workdir)) / _local_name(uri)
        digest, size = with_retries(uri, "download", lambda: _download(fs, path, local), retry)
    if sha256 is not None and digest != sha256:
        if not is_local(fs):
            local.unlink(missing_ok=True)
        raise WorkerError(f"{uri}: sha256 {digest} does not match the pinned {sha256}")
    return Fetched(uri=uri, path=local, sha256=digest, size=size)


def join_uri(prefix: str, name: str) -> str:
    return prefix.rstrip("/") + "/" + name


def publish(
    engine: Path, prefix: str, manifest: Mapping[str, Any], retry: Retry | None = None
) -> PublishedEngine:
    """Publish `engine` as `<prefix>/<sha256>.ep` and the manifest as `<prefix>/<sha256>.json`.

    Each object is written under a temporary name and then moved into place. Content addressing makes
    a repeated publish of the same engine harmless: an existing object of the right size is kept.
    """
    retry = retry or Retry()
    digest, size = hash_file(engine)
    fs, root = filesystem(prefix)
    if fs.protocol in (("http", "https"), "http", "https"):
        raise WorkerError(f"publish URI {prefix}: http(s) is read-only here; use s3://, gs:// or a path")
    root = root.rstrip("/")
    engine_uri = join_uri(prefix, f"{digest}.ep")
    document = json.dumps({**manifest, "sha256": digest, "size": size}, indent=2, sort_keys=True)

    def put_engine() -> None:
        final = f"{root}/{digest}.ep"
        if fs.exists(final) and fs.size(final) == size:
            return
        _put_then_move(fs, str(engine), root, final)

    def put_manifest() -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
            handle.write(document)
        try:
            _put_then_move(fs, handle.name, root, f"{root}/{digest}.json")
        finally:
            Path(handle.name).unlink(missing_ok=True)

    if is_local(fs):
        fs.makedirs(root, exist_ok=True)
    with_retries(engine_uri, "upload", put_engine, retry)
    with_retries(join_uri(prefix, f"{digest}.json"), "upload", put_manifest, retry)
    return PublishedEngine(uri=engine_uri, sha256=digest)


def _put_then_move(fs: Any, local: str, root: str, final: str) -> None:
    temporary = f"{root}/.tmp-{uuid.uuid4().hex}-{Path(final).name}"
    try:
        fs.put_file(local, temporary)
        fs.mv(temporary, final)
    finally:
        with contextlib.suppress(OSError):
            if fs.exists(temporary):
                fs.rm(temporary)
