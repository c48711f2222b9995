"""The worker's one error type. Its message is a single line that names the file or URI and says what
is wrong; the command prints it, puts it into the result and exits 1 without publishing anything."""

from __future__ import annotations


class WorkerError(Exception):
    """Bad input or a step that cannot finish: one human-readable line, no traceback needed."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(" ".join(message.split()))
        # Still failing after the worker's own retries, but worth another Job (storage unreachable).
        self.transient = transient

    @property
    def message(self) -> str:
        return str(self.args[0])

    @classmethod
    def from_exc(cls, context: str, exc: BaseException) -> WorkerError:
        """`<context>: <the first line of exc>` (its type's name when it says nothing): a library's
        multi-line error shortened to the line that names the problem. Raise it `from exc`."""
        text = str(exc).strip()
        return cls(f"{context}: {text.splitlines()[0] if text else type(exc).__name__}")
