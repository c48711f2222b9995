"""The sha256 of local files, computed once per content.

A serving process refits from the same few files again and again (a rollback returns to the checkpoint it
served before). Hashing is the slowest part of a hot refit (about 1 GB/s on a Xeon core, 90 ms for
resnet50's weights), so a file already hashed and unchanged since is not hashed again. "Unchanged" is
git's rule for its index: the same device, inode, size, mtime and ctime (ctime cannot be set back by a
user). Timestamps have a coarse granularity, so a file changed within RACY_NS before it was hashed could
change again without its timestamps moving: such a record is never trusted (git's "racily clean" rule),
and the file is hashed again.

What a record cannot see: a write by someone who resets the clock, or a block device rewritten below the
filesystem. A digest only ever proves the bytes that were read; the caller checks the identity again
after parsing (`FileIdentity.of(path) == before`) so that what was parsed is what was hashed.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

HASH_BUFFER_BYTES = 1024 * 1024  # fits in a core's cache
RACY_NS = 2_000_000_000  # well above any filesystem's timestamp granularity
MAX_RECORDS = 64


@dataclass(frozen=True)
class FileIdentity:
    """What a file's metadata says about its content: equal identities, same bytes (git's assumption)."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileIdentity:
        stat = path.stat()
        return cls(stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)

    def changed_before(self, when_ns: int) -> bool:
        """Whether the last change is old enough (RACY_NS before `when_ns`) for the identity to be trusted."""
        return max(self.mtime_ns, self.ctime_ns) + RACY_NS <= when_ns


def hash_file(path: Path) -> tuple[str, int]:
    """(sha256 hex, size) of a local file, read in chunks into one reused buffer (a fresh 8 MiB chunk per
    read costs page faults; a reused one stays in cache)."""
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(HASH_BUFFER_BYTES)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            digest.update(view[:count])  # hashlib releases the GIL for large updates
            size += count
    return digest.hexdigest(), size


@dataclass(frozen=True)
class _Record:
    identity: FileIdentity
    sha256: str
    hashed_at_ns: int


class KnownDigests:
    """Digests of local files this process hashed, by resolved path; the least recently used go first."""

    def __init__(self, max_records: int = MAX_RECORDS) -> None:
        self._records: OrderedDict[Path, _Record] = OrderedDict()
        self._max = max_records
        self._lock = threading.Lock()

    def lookup(self, path: Path, identity: FileIdentity) -> str | None:
        """The recorded sha256 when the file is unchanged since it was hashed and the record is trusted."""
        key = path.resolve()
        with self._lock:
            record = self._records.get(key)
            if record is None or record.identity != identity:
                return None
            if not identity.changed_before(record.hashed_at_ns):
                return None  # changed too shortly before it was hashed: timestamps can't tell
            self._records.move_to_end(key)
            return record.sha256

    def hash(self, path: Path) -> tuple[str, int, bool]:
        """(sha256, size, whether it was known) for a local file: from the record when trusted, else read.
        A file that changed while it was read is not recorded (its digest names bytes no longer there)."""
        before = FileIdentity.of(path)
        known = self.lookup(path, before)
        if known is not None:
            return known, before.size, True
        started = time.time_ns()
        digest, size = hash_file(path)
        if FileIdentity.of(path) == before and size == before.size:
            with self._lock:
                self._records[path.resolve()] = _Record(before, digest, started)
                self._records.move_to_end(path.resolve())
                while len(self._records) > self._max:
                    self._records.popitem(last=False)
        return digest, size, False


# One per process: the digests a serving process has proven stay proven for its life.
KNOWN = KnownDigests()
