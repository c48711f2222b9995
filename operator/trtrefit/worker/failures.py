"""Which storage failures are worth another try, and one clear line for those that are not.

Transient: refused, reset or timed-out connections, truncated bodies, HTTP 5xx and 429. Permanent: not
found (404/410, a missing key or file), access denied (401/403), a full local disk (ENOSPC, EDQUOT), and
anything our own code raises as a WorkerError (an oversized artifact, a digest mismatch).
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from trtrefit.worker.errors import WorkerError

_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NOT_FOUND_STATUS = (404, 410)
_DENIED_STATUS = (401, 403)

T = TypeVar("T")


@dataclass(frozen=True)
class Retry:
    """How often and how patiently a transient failure is retried (delays double each time)."""

    attempts: int = 4
    first_delay_s: float = 0.5


class TruncatedError(OSError):
    """Fewer bytes arrived than the server announced: worth another try."""


class CancelledError(WorkerError):
    """This download was stopped because another artifact of the same request failed."""


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: connection trouble, timeouts, truncated bodies, server-side 5xx/429.

    fsspec's http filesystem reports every failure of its size probe as FileNotFoundError; the real
    error is its cause, so a FileNotFoundError is judged by the chain below it."""
    if isinstance(exc, FileNotFoundError):
        return exc.__cause__ is not None and is_transient(exc.__cause__)
    if isinstance(exc, _PERMANENT) or _is_no_space(exc):
        return False
    from fsspec.exceptions import FSTimeoutError

    # s3fs passes botocore's own connection errors through
    if isinstance(exc, (ConnectionError, TimeoutError, TruncatedError, FSTimeoutError)) or (
        _is_botocore_connection_error(exc)
    ):
        return True
    try:
        import aiohttp  # http(s) and s3 only; a machine reading local files may lack it
    except ImportError:
        return isinstance(exc, OSError)
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.status >= 500 or exc.status == 429
    return isinstance(exc, (aiohttp.ClientError, OSError))


def is_unreachable(exc: BaseException) -> bool:
    """No HTTP answer at all (refused, reset, DNS, timeout), as opposed to an error status."""
    cause = exc.__cause__ if isinstance(exc, FileNotFoundError) and exc.__cause__ is not None else exc
    if isinstance(cause, (ConnectionError, TimeoutError)) or _is_botocore_connection_error(cause):
        return True
    try:
        import aiohttp
    except ImportError:
        return False
    return isinstance(cause, (aiohttp.ClientConnectionError, aiohttp.ServerTimeoutError))


def _is_botocore_connection_error(exc: BaseException) -> bool:
    try:
        from botocore.exceptions import (
            ConnectionError as BotoConnectionError,
        )
        from botocore.exceptions import HTTPClientError
    except ImportError:
        return False
    return isinstance(exc, (BotoConnectionError, HTTPClientError))


def _is_no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _NO_SPACE


def _http_status(exc: BaseException) -> int | None:
    cause = exc.__cause__ if isinstance(exc, FileNotFoundError) else exc
    status = getattr(cause, "status", None)
    return status if isinstance(status, int) else None


def with_retries(
    uri: str, action: str, step: Callable[[], T], retry: Retry, cancel: threading.Event | None = None
) -> T:
    """Run `step`, retrying transient failures; permanent ones become one WorkerError line. A set
    `cancel` stops the waiting between attempts."""
    delay = retry.first_delay_s
    for attempt in range(1, retry.attempts + 1):
        try:
            return step()
        except WorkerError:
            raise
        except Exception as exc:  # classified right below; anything permanent is re-raised as one line
            if not is_transient(exc):
                raise permanent(uri, action, exc) from exc
            if attempt == retry.attempts:
                what = "unreachable" if is_unreachable(exc) else f"{action} failed"
                raise WorkerError(
                    f"{uri}: {what} after {attempt} attempts: {describe(exc)}", transient=True
                ) from exc
            if cancel is not None and cancel.wait(delay):
                raise CancelledError(f"{uri}: {action} stopped: another artifact failed") from exc
            if cancel is None:
                time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover


def permanent(uri: str, action: str, exc: BaseException) -> WorkerError:
    """One line for a failure that is not worth another try."""
    status = _http_status(exc)
    if isinstance(exc, FileNotFoundError) and status in (None, *_NOT_FOUND_STATUS):
        return WorkerError(f"{uri}: not found")
    if isinstance(exc, PermissionError) or status in _DENIED_STATUS:
        return WorkerError(f"{uri}: access denied ({describe(exc)})")
    if _is_no_space(exc):
        return WorkerError(f"{uri}: {action} failed: the local disk takes no more ({describe(exc)})")
    return WorkerError(f"{uri}: {action} failed: {describe(exc)}")


def describe(exc: BaseException) -> str:
    """The error in one line; for fsspec's FileNotFoundError wrapper, the error it wraps."""
    if isinstance(exc, FileNotFoundError) and exc.__cause__ is not None:
        exc = exc.__cause__
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
