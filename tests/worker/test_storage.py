"""Fetch and publish against real servers on loopback: S3 (moto server mode) and plain HTTP."""

from __future__ import annotations

import errno
import hashlib
import http.server
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.worker.conftest import S3, HttpFiles
from trtrefit.worker.errors import WorkerError
from trtrefit.worker.failures import is_transient, permanent
from trtrefit.worker.storage import (
    Retry,
    Wanted,
    check_digest_format,
    fetch,
    fetch_all,
    parse_byte_size,
    publish,
)

FAST_RETRY = Retry(attempts=3, first_delay_s=0.01)
BODY = bytes(range(256)) * 4096  # 1 MiB


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "artifact.bin"
    path.write_bytes(BODY)
    return path


class TestS3:
    def test_fetch_streams_and_checks_the_pinned_digest(self, s3: S3, artifact: Path, tmp_path: Path) -> None:
        uri = s3.put("dir/artifact.safetensors", artifact)
        got = fetch(uri, tmp_path, sha(BODY), FAST_RETRY)
        assert got.path.read_bytes() == BODY
        assert got.path.name == "artifact.safetensors"
        assert (got.sha256, got.size) == (sha(BODY), len(BODY))

    def test_digest_mismatch_fails_naming_the_uri_and_keeps_nothing(
        self, s3: S3, artifact: Path, tmp_path: Path
    ) -> None:
        uri = s3.put("artifact.bin", artifact)
        work = tmp_path / "work"
        work.mkdir()
        with pytest.raises(
            WorkerError, match=rf"^{uri}: sha256 {sha(BODY)} does not match the pinned 0{{64}}$"
        ):
            fetch(uri, work, "0" * 64, FAST_RETRY)
        assert [p for p in work.rglob("*") if p.is_file()] == []

    def test_missing_key_is_one_clear_line(self, s3: S3, tmp_path: Path) -> None:
        with pytest.raises(WorkerError, match=rf"^s3://{s3.bucket}/nope.safetensors: not found$"):
            fetch(f"s3://{s3.bucket}/nope.safetensors", tmp_path, None, FAST_RETRY)

    def test_publish_is_content_addressed_with_a_manifest_and_no_leftovers(
        self, s3: S3, artifact: Path
    ) -> None:
        published = publish(artifact, f"s3://{s3.bucket}/refits/", {"backend": "exported"}, FAST_RETRY)
        assert published.sha256 == sha(BODY)
        assert published.uri == f"s3://{s3.bucket}/refits/{sha(BODY)}.ep"
        assert s3.keys() == [f"refits/{sha(BODY)}.ep", f"refits/{sha(BODY)}.json"]
        body = s3.client().get_object(Bucket=s3.bucket, Key=f"refits/{sha(BODY)}.json")["Body"].read()
        manifest = json.loads(body)
        assert manifest["backend"] == "exported"
        assert (manifest["sha256"], manifest["size"]) == (sha(BODY), len(BODY))

    def test_publishing_the_same_engine_twice_is_harmless(self, s3: S3, artifact: Path) -> None:
        first = publish(artifact, f"s3://{s3.bucket}/refits", {}, FAST_RETRY)
        second = publish(artifact, f"s3://{s3.bucket}/refits", {}, FAST_RETRY)
        assert first == second
        assert len(s3.keys("refits/")) == 2


class TestHttp:
    def test_fetch(self, http_files: HttpFiles, tmp_path: Path) -> None:
        got = fetch(http_files.add("ckpt.safetensors", BODY), tmp_path, sha(BODY), FAST_RETRY)
        assert got.path.read_bytes() == BODY

    def test_a_truncated_body_is_retried(self, http_files: HttpFiles, tmp_path: Path) -> None:
        uri = http_files.add("flaky.bin", BODY, mode="flaky")
        got = fetch(uri, tmp_path, sha(BODY), FAST_RETRY)
        assert got.path.read_bytes() == BODY
        assert http_files.files["flaky.bin"].gets == 2

    def test_a_body_that_stays_truncated_fails_after_the_retries(
        self, http_files: HttpFiles, tmp_path: Path
    ) -> None:
        uri = http_files.add("short.bin", BODY, mode="truncate")
        with pytest.raises(WorkerError, match=rf"^{uri}: download failed after 3 attempts: "):
            fetch(uri, tmp_path, None, FAST_RETRY)
        assert http_files.files["short.bin"].gets == 3

    def test_not_found(self, http_files: HttpFiles, tmp_path: Path) -> None:
        with pytest.raises(WorkerError, match=r": not found$"):
            fetch(f"{http_files.base}/missing.bin", tmp_path, None, FAST_RETRY)

    def test_digest_mismatch(self, http_files: HttpFiles, tmp_path: Path) -> None:
        uri = http_files.add("ckpt.bin", BODY)
        with pytest.raises(WorkerError, match="does not match the pinned"):
            fetch(uri, tmp_path, "f" * 64, FAST_RETRY)

    def test_publishing_to_http_is_refused(self, http_files: HttpFiles, artifact: Path) -> None:
        with pytest.raises(WorkerError, match="read-only"):
            publish(artifact, f"{http_files.base}/refits/", {}, FAST_RETRY)


class TestLocal:
    @pytest.mark.parametrize("scheme", ["", "file://"])
    def test_local_files_are_hashed_in_place(self, scheme: str, artifact: Path, tmp_path: Path) -> None:
        got = fetch(f"{scheme}{artifact}", tmp_path / "unused", sha(BODY))
        assert got.path == artifact
        assert got.sha256 == sha(BODY)

    def test_missing_local_file(self, tmp_path: Path) -> None:
        with pytest.raises(WorkerError, match=r"/nope.pt2: not found$"):
            fetch(str(tmp_path / "nope.pt2"), tmp_path)

    def test_publish_creates_the_prefix_and_leaves_no_temporary_file(
        self, artifact: Path, tmp_path: Path
    ) -> None:
        prefix = tmp_path / "out" / "refits"
        published = publish(artifact, f"file://{prefix}/", {"a": 1})
        assert published.uri == f"file://{prefix}/{sha(BODY)}.ep"
        assert sorted(p.name for p in prefix.iterdir()) == [f"{sha(BODY)}.ep", f"{sha(BODY)}.json"]
        assert (prefix / f"{sha(BODY)}.ep").read_bytes() == BODY


class TestDigestOption:
    def test_accepts_plain_and_prefixed_hex(self) -> None:
        assert check_digest_format("--engine-sha256", "sha256:" + "AB" * 32) == "ab" * 32
        assert check_digest_format("--engine-sha256", None) is None

    def test_rejects_anything_else(self) -> None:
        with pytest.raises(WorkerError, match=r"^--checkpoint-sha256 'xyz': not a sha256 hex digest"):
            check_digest_format("--checkpoint-sha256", "xyz")


def test_gs_without_gcsfs_says_what_to_install(tmp_path: Path) -> None:
    pytest.importorskip("fsspec")
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(WorkerError, match=r"^gs://bucket/k: no filesystem driver .*trtrefit\[gcs\]"):
            fetch("gs://bucket/k", tmp_path)
    else:
        pytest.skip("gcsfs is installed here")


# -- bounded downloads and failure classes, against a real HTTP server on loopback --------------------------


@dataclass
class Route:
    """How the server answers one path: `fail_first` requests get `status`, then `body` (None: endless)."""

    body: bytes | None = None
    status: int = 200
    fail_first: int = 0
    announce: int | None = None  # a Content-Length to claim (for bodies that lie about their size)
    pace_s: float = 0.0  # pause between endless chunks
    requests: list[str] = field(default_factory=list)

    def record(self, method: str) -> int:
        """Count the request; the error status to answer it with, or 0 for the body."""
        self.requests.append(method)
        if self.status != 200:
            return self.status
        return 503 if len(self.requests) <= self.fail_first else 0


@dataclass
class Server:
    base: str
    routes: dict[str, Route]

    def add(self, name: str, route: Route) -> str:
        self.routes[name] = route
        return f"{self.base}/{name}"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    routes: dict[str, Route]  # set by the fixture's subclass

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _answer(self) -> Route | None:
        route = self.routes.get(self.path.lstrip("/"))
        if route is None:
            self._status(404)
            return None
        failing = route.record(self.command)
        if failing:
            self._status(failing)
            return None
        self.send_response(200)
        size = len(route.body) if route.body is not None else route.announce
        if size is not None:
            self.send_header("Content-Length", str(size))
        self.send_header("Connection", "close")
        self.end_headers()
        return route

    def _status(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()

    def do_HEAD(self) -> None:
        self._answer()
        self.close_connection = True

    def do_GET(self) -> None:
        route = self._answer()
        self.close_connection = True
        if route is None:
            return
        if route.body is not None:
            self.wfile.write(route.body)
        else:
            _stream_forever(self.wfile, route.pace_s)


def _stream_forever(out: Any, pace_s: float) -> None:
    """An endless body: until the client hangs up."""
    chunk = b"x" * 65536
    try:
        while True:
            out.write(chunk)
            if pace_s:
                time.sleep(pace_s)
    except (BrokenPipeError, ConnectionResetError):
        return


@pytest.fixture
def server() -> Iterator[Server]:
    routes: dict[str, Route] = {}
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), type("Handler", (_Handler,), {"routes": routes})
    )
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    host, port = httpd.server_address[:2]
    yield Server(f"http://{host!s}:{port}", routes)
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


class TestBounded:
    def test_an_endless_body_stops_at_the_cap(self, server: Server, tmp_path: Path) -> None:
        uri = server.add("endless.bin", Route(body=None))
        started = time.monotonic()
        with pytest.raises(WorkerError) as caught:
            fetch(uri, tmp_path, None, FAST_RETRY, max_bytes=3 * 1024 * 1024)
        assert caught.value.message == (
            f"{uri}: more than 3145728 bytes (the limit per artifact); stopped reading"
        )
        assert time.monotonic() - started < 10
        assert _files(tmp_path) == []

    def test_an_announced_size_over_the_cap_is_refused_before_downloading(
        self, server: Server, tmp_path: Path
    ) -> None:
        uri = server.add("huge.bin", Route(body=None, announce=50 * 1024**3))
        with pytest.raises(WorkerError, match=rf"^{uri}: announces 53687091200 bytes, over the 1048576-byte"):
            fetch(uri, tmp_path, None, FAST_RETRY, max_bytes=1024 * 1024)
        assert server.routes["huge.bin"].requests == ["HEAD"]

    def test_exactly_the_cap_is_allowed(self, server: Server, tmp_path: Path) -> None:
        uri = server.add("fits.bin", Route(body=BODY))
        assert fetch(uri, tmp_path, sha(BODY), FAST_RETRY, max_bytes=len(BODY)).size == len(BODY)
        with pytest.raises(WorkerError, match="over the 1048575-byte limit"):
            fetch(uri, tmp_path, None, FAST_RETRY, max_bytes=len(BODY) - 1)

    def test_a_local_file_over_the_cap_is_refused(self, artifact: Path, tmp_path: Path) -> None:
        with pytest.raises(WorkerError, match=rf"^{artifact}: 1048576 bytes, over the 1000-byte limit"):
            fetch(str(artifact), tmp_path, max_bytes=1000)

    @pytest.mark.parametrize(("text", "value"), [("20Gi", 20 * 1024**3), ("512", 512), ("3M", 3_000_000)])
    def test_size_flags(self, text: str, value: int) -> None:
        assert parse_byte_size("--max-artifact-bytes", text) == value

    @pytest.mark.parametrize("text", ["0", "-1", "20GB", "lots", ""])
    def test_bad_size_flags_name_the_option(self, text: str) -> None:
        with pytest.raises(WorkerError, match=rf"^--max-artifact-bytes {text!r}: expected a positive size"):
            parse_byte_size("--max-artifact-bytes", text)


class TestFailureClasses:
    def test_503_then_200_succeeds_after_a_retry(self, server: Server, tmp_path: Path) -> None:
        uri = server.add("busy.bin", Route(body=BODY, fail_first=2))  # the first attempt's HEAD and GET
        got = fetch(uri, tmp_path, sha(BODY), FAST_RETRY)
        assert got.path.read_bytes() == BODY
        assert len(server.routes["busy.bin"].requests) > 2

    def test_a_server_that_stays_503_fails_after_the_retries_saying_so(
        self, server: Server, tmp_path: Path
    ) -> None:
        uri = server.add("down.bin", Route(status=503))
        with pytest.raises(WorkerError) as caught:
            fetch(uri, tmp_path, None, FAST_RETRY)
        assert caught.value.message.startswith(f"{uri}: download failed after 3 attempts: ")
        assert "503" in caught.value.message
        assert "not found" not in caught.value.message

    def test_404_fails_at_once_naming_the_uri(self, server: Server, tmp_path: Path) -> None:
        uri = server.add("gone.bin", Route(status=404))
        with pytest.raises(WorkerError) as caught:
            fetch(uri, tmp_path, None, Retry(attempts=3, first_delay_s=5))
        assert caught.value.message == f"{uri}: not found"
        assert server.routes["gone.bin"].requests == ["HEAD", "GET"]  # one attempt (fsspec's two probes)

    def test_403_is_access_denied(self, server: Server, tmp_path: Path) -> None:
        uri = server.add("secret.bin", Route(status=403))
        with pytest.raises(WorkerError, match=rf"^{uri}: access denied \(ClientResponseError: 403"):
            fetch(uri, tmp_path, None, FAST_RETRY)

    def test_a_refused_connection_is_retried_then_unreachable_not_missing(self, tmp_path: Path) -> None:
        with socket.socket() as probe:  # a port nobody listens on
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        uri = f"http://127.0.0.1:{port}/model.ep"
        started = time.monotonic()
        with pytest.raises(WorkerError) as caught:
            fetch(uri, tmp_path, None, Retry(attempts=3, first_delay_s=0.2))
        assert caught.value.message.startswith(f"{uri}: unreachable after 3 attempts: ClientConnectorError")
        assert "not found" not in caught.value.message
        assert time.monotonic() - started >= 0.6  # waited 0.2 s + 0.4 s between the attempts

    def test_a_full_disk_is_permanent(self, server: Server, tmp_path: Path) -> None:
        """A real write failure: the child process may write at most 64 KiB per file (RLIMIT_FSIZE), so
        the download's write fails with EFBIG as a full disk fails with ENOSPC."""
        uri = server.add("big.bin", Route(body=BODY))
        script = (
            "import resource, signal, sys\n"
            "from pathlib import Path\n"
            "from trtrefit.worker.errors import WorkerError\n"
            "from trtrefit.worker.storage import Retry, fetch\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))\n"
            "try:\n"
            "    fetch(sys.argv[1], Path(sys.argv[2]), None, Retry(attempts=3, first_delay_s=0.01))\n"
            "except WorkerError as exc:\n"
            "    print(exc.message)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", script, uri, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.stdout.strip().startswith(f"{uri}: download failed: the local disk takes no more ("), (
            done.stderr
        )
        assert server.routes["big.bin"].requests.count("GET") == 1  # not retried
        assert _files(tmp_path) == []

    def test_no_space_left_is_never_transient(self) -> None:
        """ENOSPC itself, which a test cannot cause on this machine's disk: the classification alone."""
        error = OSError(errno.ENOSPC, "No space left on device")
        assert not is_transient(error)
        assert permanent("s3://b/k", "download", error).message == (
            "s3://b/k: download failed: the local disk takes no more "
            "(OSError: [Errno 28] No space left on device)"
        )


class TestFetchAll:
    def test_fetches_every_artifact_in_order(self, server: Server, artifact: Path, tmp_path: Path) -> None:
        wanted = {
            "engine": Wanted(server.add("e.ep", Route(body=BODY)), sha(BODY)),
            "checkpoint": Wanted(str(artifact)),
        }
        got = fetch_all(wanted, tmp_path, FAST_RETRY)
        assert list(got) == ["engine", "checkpoint"]
        assert {f.sha256 for f in got.values()} == {sha(BODY)}

    def test_the_first_failure_stops_the_other_downloads(self, server: Server, tmp_path: Path) -> None:
        slow = server.add("slow.bin", Route(body=None, pace_s=0.01))  # ~6 MB/s, forever
        missing = server.add("missing.bin", Route(status=404))
        started = time.monotonic()
        with pytest.raises(WorkerError) as caught:
            fetch_all(
                {"engine": Wanted(slow), "checkpoint": Wanted(missing)},
                tmp_path,
                FAST_RETRY,
                max_bytes=10 * 1024**3,
            )
        assert caught.value.message == f"{missing}: not found"
        assert time.monotonic() - started < 10
        assert _files(tmp_path) == []  # the stopped download's partial file is gone
