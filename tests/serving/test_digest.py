"""The checkpoint's digest in a hot refit: an unpinned local checkpoint is hashed on a thread of its own
while it is parsed and staged, and the result still carries the real sha256 of its bytes; a pinned one is
checked before anything parses it; a file that changes while it is read is refused; a local file already
hashed and unchanged since is not hashed again (worker/digests.py)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from tests.serving.conftest import Bundle
from trtrefit.api.result import Outcome
from trtrefit.serving.service import ServingModel
from trtrefit.worker import digests, storage
from trtrefit.worker.errors import WorkerError
from trtrefit.worker.storage import HASH_BUFFER_BYTES, PendingDigest, digest_later, hash_file


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_unpinned_refit_reports_the_real_digest(model: ServingModel, bundle: Bundle) -> None:
    result = model.refit(bundle.request("b", key="bbbb0000"))
    assert result.outcome == Outcome.PASSED, result.message
    real = sha256_of(bundle.checkpoints["b"])
    assert result.checkpoint is not None and result.checkpoint.sha256 == real
    state = model.state()
    assert state.checkpoint is not None and state.checkpoint.sha256 == real
    assert "digest" in result.timings


def test_pinned_refit_passes_with_the_right_digest(model: ServingModel, bundle: Bundle) -> None:
    real = sha256_of(bundle.checkpoints["b"])
    result = model.refit(bundle.request("b", key="bbbb0000", checkpoint__sha256=real))
    assert result.outcome == Outcome.PASSED, result.message
    assert result.checkpoint is not None and result.checkpoint.sha256 == real
    assert result.timings["digest"] < 0.01  # nothing left to wait for: hashed before parsing


def test_pinned_mismatch_is_refused_before_the_file_is_parsed(
    model: ServingModel, bundle: Bundle, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00not a safetensors file" * 1000)
    # Unpinned, the same bytes are parsed, refused for what they are, and still named by their digest.
    unpinned = model.refit(bundle.request(garbage.as_uri()))
    assert unpinned.outcome == Outcome.ERROR
    assert "does not match the pinned" not in unpinned.message
    assert unpinned.checkpoint is not None and unpinned.checkpoint.sha256 == sha256_of(garbage)
    # Pinned to other bytes: the digest refuses them, so the parser never saw them.
    pinned = model.refit(bundle.request(garbage.as_uri(), checkpoint__sha256="0" * 64))
    assert pinned.outcome == Outcome.ERROR
    assert "does not match the pinned" in pinned.message, pinned.message
    assert pinned.message != unpinned.message
    state = model.state()
    assert state.checkpoint is not None and state.checkpoint.key == "aaaa0000"


def test_hash_file_is_sha256_of_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(2 * HASH_BUFFER_BYTES + 12345))  # several reads, the last one short
    assert hash_file(path) == (sha256_of(path), path.stat().st_size)


@pytest.mark.parametrize("change", ["rewritten", "touched", "replaced", "removed"])
def test_a_file_that_changes_while_it_is_hashed_is_refused(tmp_path: Path, change: str) -> None:
    path = tmp_path / "ckpt.safetensors"
    path.write_bytes(os.urandom(HASH_BUFFER_BYTES))
    pending = digest_later(path.as_uri())
    assert isinstance(pending, PendingDigest)
    # result() compares the file's identity at the start with the one at the join, after any parse.
    if change == "rewritten":
        path.write_bytes(os.urandom(HASH_BUFFER_BYTES + 1))
    elif change == "touched":
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    elif change == "replaced":
        other = tmp_path / "other"
        other.write_bytes(path.read_bytes())
        os.utime(other, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns))
        other.replace(path)  # same bytes and mtime, another inode
    else:
        path.unlink()  # before or after the thread opened it: either way refused
    says = "changed while it was being read" + ("|reading it failed" if change == "removed" else "")
    with pytest.raises(WorkerError, match=says):
        pending.result()


def test_an_unchanged_file_gives_its_digest_and_other_uris_are_fetched(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.safetensors"
    path.write_bytes(os.urandom(1000))
    pending = digest_later(str(path))
    assert pending is not None
    done = pending.result()
    assert (done.sha256, done.size, done.path) == (sha256_of(path), 1000, path)
    assert digest_later("http://127.0.0.1:9/ckpt.safetensors") is None
    with pytest.raises(WorkerError, match="not found"):
        digest_later((tmp_path / "nope").as_uri())
    with pytest.raises(WorkerError, match="over the 10-byte limit"):
        digest_later(path.as_uri(), max_bytes=10)


def test_a_file_already_hashed_and_unchanged_is_not_hashed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    known = digests.KnownDigests()
    path = tmp_path / "ckpt.safetensors"
    path.write_bytes(os.urandom(HASH_BUFFER_BYTES + 7))
    # Written just now: its timestamps could still move without changing (git's "racily clean" file), so
    # it is read every time until it is older than RACY_NS.
    assert known.hash(path) == (sha256_of(path), path.stat().st_size, False)
    assert known.hash(path)[2] is False
    # Older than the granularity (made so by shrinking the margin; the clock is not faked).
    monkeypatch.setattr(digests, "RACY_NS", 0)
    time.sleep(0.05)
    known = digests.KnownDigests()
    first = known.hash(path)
    again = known.hash(path)
    assert first == (sha256_of(path), path.stat().st_size, False)
    assert again == (first[0], first[1], True)


@pytest.mark.parametrize("change", ["same size, new bytes", "touched", "replaced"])
def test_a_known_file_that_changed_is_hashed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    monkeypatch.setattr(digests, "RACY_NS", 0)
    known = digests.KnownDigests()
    path = tmp_path / "ckpt.safetensors"
    path.write_bytes(os.urandom(4096))
    time.sleep(0.05)
    known.hash(path)
    time.sleep(0.05)  # past the filesystem's timestamp granularity (RACY_NS covers this for real)
    if change == "same size, new bytes":
        path.write_bytes(os.urandom(4096))
    elif change == "touched":
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime; ctime moves
    else:
        other = tmp_path / "other"
        other.write_bytes(os.urandom(4096))
        other.replace(path)
    digest, _, was_known = known.hash(path)
    assert (digest, was_known) == (sha256_of(path), False)


def test_fetch_of_a_known_local_file_skips_the_hash_and_checks_it_after_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(digests, "RACY_NS", 0)
    monkeypatch.setattr(digests, "KNOWN", digests.KnownDigests())
    monkeypatch.setattr(storage, "KNOWN", digests.KNOWN)
    path = tmp_path / "ckpt.safetensors"
    path.write_bytes(os.urandom(4096))
    time.sleep(0.05)
    real = sha256_of(path)
    assert storage.fetch(path.as_uri(), tmp_path, real).known is False
    again = storage.fetch(path.as_uri(), tmp_path, real)
    assert (again.sha256, again.known) == (real, True)
    again.check_unchanged()
    with pytest.raises(WorkerError, match="does not match the pinned"):
        storage.fetch(path.as_uri(), tmp_path, "0" * 64)  # a known digest is still compared with the pin
    time.sleep(0.05)
    path.write_bytes(os.urandom(4096))  # after the fetch, before (or while) the caller parses it
    with pytest.raises(WorkerError, match="changed while it was being read"):
        again.check_unchanged()
    assert storage.fetch(path.as_uri(), tmp_path).sha256 == sha256_of(path)
