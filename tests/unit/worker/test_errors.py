"""WorkerError.from_exc: one line naming the context and the library's first line of complaint."""

from __future__ import annotations

from trtrefit.worker.errors import WorkerError


def test_from_exc_keeps_the_first_line_after_the_context() -> None:
    error = WorkerError.from_exc("engine s3://m/e.ep", RuntimeError("bad magic\n  at frame 1\n  at frame 2"))
    assert error.message == "engine s3://m/e.ep: bad magic"


def test_from_exc_names_the_type_of_an_error_that_says_nothing() -> None:
    assert WorkerError.from_exc("verify", AssertionError()).message == "verify: AssertionError"
