"""Artifacts by URI through fsspec: `file://` and plain paths, `http(s)://`, `s3://` (s3fs, credentials
and `AWS_ENDPOINT_URL` from the standard AWS environment variables) and `gs://` (gcsfs, imported by
fsspec only when such a URI is used).

Downloads are streamed to a local folder with the sha256 computed on the way and compared with the
pinned digest, and are bounded: an artifact larger than `max_bytes` (announced or streamed) is refused.
Transient failures (refused or dropped connections, truncated bodies, 5xx, 429) are retried with
exponential backoff; not found, access denied, a full disk and an oversized artifact are permanent.
`fetch_all` fetches several artifacts at once and stops the others at the first failure (which
failures are which: `failures`). Publishing writes a temporary key and then moves it to
`<prefix>/<sha256>.ep`, so a reader never sees a half-written engine; the manifest `<sha256>.json`
lands after the engine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from trtrefit.api.quantity import byte_size
from trtrefit.api.result import PublishedEngine
from trtrefit.worker.digests import HASH_BUFFER_BYTES, KNOWN, FileIdentity, hash_file
from trtrefit.worker.errors import WorkerError
from trtrefit.worker.failures import CancelledError, Retry, TruncatedError, with_retries
from trtrefit.worker.progress import DownloadMeter

__all__ = [  # Retry and the errors are part of this module's interface (fetch's signature, its raises)
    "DEFAULT_MAX_BYTES",
    "HASH_BUFFER_BYTES",
    "CancelledError",
    "Fetched",
    "PendingDigest",
    "Retry",
    "TruncatedError",
    "Wanted",
    "check_digest_format",
    "digest_later",
    "fetch",
    "fetch_all",
    "hash_file",
    "parse_byte_size",
    "publish",
]

CHUNK_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_BYTES = 20 * 1024**3  # per artifact; the largest engines we know of are a few GiB
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Fetched:
    """A local copy of an artifact (or the artifact itself when it is a local file) and its digest. For a
    file that was already local: its identity when hashed, and whether its digest was already known."""

    uri: str
    path: Path
    sha256: str
    size: int
    identity: FileIdentity | None = None
    known: bool = False

    def check_unchanged(self) -> None:
        """For a file read in place: refuse it if it changed since it was hashed (call after parsing it)."""
        if self.identity is None:
            return
        try:
            now: FileIdentity | None = FileIdentity.of(self.path)
        except OSError:
            now = None  # gone meanwhile
        if now != self.identity:
            raise WorkerError(_CHANGED.format(uri=self.uri))


@dataclass(frozen=True)
class Wanted:
    """One artifact for `fetch_all`: its URI and, when pinned, its sha256."""

    uri: str
    sha256: str | None = None


def parse_byte_size(option: str, text: str) -> int:
    """A size flag (`--max-artifact-bytes`): bytes, or a Kubernetes quantity such as 20Gi or 500M."""
    size = byte_size(text)
    if size is None:
        raise WorkerError(f"{option} {text!r}: expected a positive size in bytes (e.g. 21474836480 or 20Gi)")
    return size


def check_digest_format(option: str, digest: str | None) -> str | None:
    """Normalise a pinned digest (optionally `sha256:`-prefixed) or fail naming the option."""
    if digest is None or digest == "":
        return None
    value = digest.lower().removeprefix("sha256:")
    if not SHA256_RE.match(value):
        raise WorkerError(f"{option} {digest!r}: not a sha256 hex digest (64 hex characters)")
    return value


def storage_options(uri: str) -> dict[str, Any]:
    """fsspec options for a URI; for S3 the endpoint comes from AWS_ENDPOINT_URL_S3/AWS_ENDPOINT_URL.

    Object stores keep no listings cache (sizes and existence are always asked afresh), so their
    filesystem instances can be reused: a serving process then pays for the client session once, not on
    every refit (about 0.5-1.5 s against a local S3 server)."""
    scheme = urlsplit(uri).scheme
    if scheme in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        fresh: dict[str, Any] = {"use_listings_cache": False}
        return {**fresh, "client_kwargs": {"endpoint_url": endpoint}} if endpoint else fresh
    if scheme in ("gs", "gcs"):
        return {"use_listings_cache": False}
    return {}


def filesystem(uri: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for a URI, with one clear error for unusable schemes."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(uri, **storage_options(uri))
    except ImportError as exc:
        extra = " (pip install 'trtrefit[gcs]')" if uri.startswith(("gs://", "gcs://")) else ""
        raise WorkerError(f"{uri}: no filesystem driver for this scheme{extra}: {exc}") from exc
    except ValueError as exc:
        raise WorkerError(f"{uri}: unsupported URI: {exc}") from exc
    return fs, str(path)


def is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


class PendingDigest:
    """The sha256 of an UNPINNED local file, computed on a thread of its own while the caller parses the
    same file (hashing and reading release the GIL, so they overlap); at once when the file is already
    known (digests.KnownDigests).

    `result()` waits for the digest and refuses a file whose identity (digests.FileIdentity) changed
    between the start and then. Only a pinned digest, checked before anything parses the file (`fetch`),
    proves what was loaded.
    """

    def __init__(self, uri: str, path: Path) -> None:
        self.uri = uri
        self.path = path
        self._before = FileIdentity.of(path)
        known = KNOWN.lookup(path, self._before)
        self._future: Future[tuple[str, int, bool]] = Future()
        if known is not None:
            self._future.set_result((known, self._before.size, True))
        else:
            self._future = _DIGESTS.submit(KNOWN.hash, path)

    def result(self) -> Fetched:
        try:
            digest, size, known = self._future.result()
        except OSError as exc:
            raise WorkerError(f"{self.uri}: reading it failed: {exc}") from exc
        fetched = Fetched(self.uri, self.path, digest, size, self._before, known)
        if size != self._before.size:
            raise WorkerError(_CHANGED.format(uri=self.uri))
        fetched.check_unchanged()
        return fetched


# One thread is enough: refits run one at a time and each waits for its own digest before it goes on.
_DIGESTS = ThreadPoolExecutor(max_workers=1, thread_name_prefix="digest")
_CHANGED = (
    "{uri}: the file changed while it was being read (inode, size or times); refit again once it stays put"
)


def digest_later(uri: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> PendingDigest | None:
    """For a local file: check it like `fetch` does and start hashing it in the background. None for any
    other URI (fetch it: a download hashes on the way, no second pass). Only for UNPINNED artifacts."""
    fs, path = filesystem(uri)
    if not is_local(fs):
        return None
    return PendingDigest(uri, _local_file(uri, Path(path), max_bytes))


def _local_file(uri: str, local: Path, max_bytes: int) -> Path:
    if not local.is_file():
        raise WorkerError(f"{uri}: not found" if not local.exists() else f"{uri}: not a file")
    if local.stat().st_size > max_bytes:
        size = local.stat().st_size
        raise WorkerError(f"{uri}: {size} bytes, over the {max_bytes}-byte limit per artifact")
    return local


def _local_name(uri: str) -> str:
    name = Path(urlsplit(uri).path).name or "artifact"
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _download(
    fs: Any, path: str, target: Path, *, uri: str, max_bytes: int, cancel: threading.Event | None
) -> tuple[str, int]:
    expected = _announced_size(fs, path)
    if expected is not None and expected > max_bytes:
        raise WorkerError(f"{uri}: announces {expected} bytes, over the {max_bytes}-byte limit per artifact")
    digest = hashlib.sha256()
    size = 0
    # block_size=0 asks HTTP for one streamed response instead of ranged block reads.
    options = {"block_size": 0} if fs.protocol in (("http", "https"), "http", "https") else {}
    # The meter logs bytes, total and rate every few seconds while the body streams (worker.progress).
    meter = DownloadMeter(uri, expected)
    with meter, fs.open(path, "rb", **options) as remote, target.open("wb") as local:
        # Never ask for more than one byte past the limit: an endless body stops right there.
        while chunk := remote.read(min(CHUNK_BYTES, max_bytes + 1 - size)):
            size += len(chunk)
            if size > max_bytes:
                raise WorkerError(
                    f"{uri}: more than {max_bytes} bytes (the limit per artifact); stopped reading"
                )
            if cancel is not None and cancel.is_set():
                raise CancelledError(f"{uri}: download stopped: another artifact failed")
            digest.update(chunk)
            local.write(chunk)
            meter.relative_update(len(chunk))
    if expected is not None and size != expected:
        raise TruncatedError(f"download truncated: got {size} of {expected} bytes")
    return digest.hexdigest(), size


def _announced_size(fs: Any, path: str) -> int | None:
    size = fs.info(path).get("size")
    return int(size) if isinstance(size, int) else None


def fetch(
    uri: str,
    workdir: Path,
    sha256: str | None = None,
    retry: Retry | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    cancel: threading.Event | None = None,
) -> Fetched:
    """Make `uri` available as a local file, checking the pinned sha256 when one is given.

    Local files are hashed in place (no copy), once per content (digests.KnownDigests); remote ones are
    streamed into a fresh folder under `workdir`, which is removed again when the fetch fails. A digest
    mismatch, an artifact over `max_bytes` and a full disk are permanent and never retried; a set
    `cancel` stops the download.
    """
    if max_bytes <= 0:
        raise WorkerError(f"max_bytes {max_bytes}: the size limit per artifact must be positive")
    retry = retry or Retry()
    fs, path = filesystem(uri)
    identity, known = None, False
    if is_local(fs):
        local = _local_file(uri, Path(path), max_bytes)
        identity = FileIdentity.of(local)
        digest, size, known = KNOWN.hash(local)
        if size != identity.size:
            raise WorkerError(_CHANGED.format(uri=uri))
    else:
        folder = Path(tempfile.mkdtemp(prefix="fetch-", dir=workdir))
        local = folder / _local_name(uri)
        try:
            digest, size = with_retries(
                uri,
                "download",
                lambda: _download(fs, path, local, uri=uri, max_bytes=max_bytes, cancel=cancel),
                retry,
                cancel,
            )
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # a partial file must not hold the disk
            raise
    if sha256 is not None and digest != sha256:
        if not is_local(fs):
            shutil.rmtree(local.parent, ignore_errors=True)
        raise WorkerError(f"{uri}: sha256 {digest} does not match the pinned {sha256}")
    return Fetched(uri=uri, path=local, sha256=digest, size=size, identity=identity, known=known)


def fetch_all(
    wanted: Mapping[str, Wanted],
    workdir: Path,
    retry: Retry | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> dict[str, Fetched]:
    """Fetch several artifacts (by role) in parallel: downloads overlap and hashing, which releases the
    GIL, runs on several cores. The first failure stops the others (their partial files are removed)
    and is raised; the result keeps the order of `wanted`."""
    if not wanted:
        return {}
    cancel = threading.Event()
    first: BaseException | None = None
    with ThreadPoolExecutor(max_workers=len(wanted), thread_name_prefix="fetch") as pool:
        futures = {
            pool.submit(
                fetch, item.uri, workdir, item.sha256, retry, max_bytes=max_bytes, cancel=cancel
            ): role
            for role, item in wanted.items()
        }
        for future in as_completed(futures):
            error = future.exception()
            if error is not None and first is None:
                first = error
                cancel.set()
    if first is not None:
        raise first
    done = {role: future.result() for future, role in futures.items()}
    return {role: done[role] for role in wanted}


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
