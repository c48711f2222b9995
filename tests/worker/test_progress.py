"""Download progress: lines with bytes, total and rate appear WHILE a slow body streams from a real local
HTTP server (not one line at the end), in-process and from a real `trtrefit refit --log-format json`."""

from __future__ import annotations

import http.server
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.worker.conftest import Bundle
from trtrefit.worker.progress import DownloadMeter
from trtrefit.worker.storage import fetch

PIECES = 8
PACE_S = 0.25  # the body takes about PIECES * PACE_S = 2 s
REPORT_S = "0.3"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class SlowServer:
    base: str
    files: dict[str, bytes] = field(default_factory=dict)
    finished: dict[str, float] = field(default_factory=dict)  # name -> when its last piece went out

    def add(self, name: str, body: bytes) -> str:
        self.files[name] = body
        return f"{self.base}/{name}"


def _handler(server: SlowServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def _headers(self) -> bytes | None:
            body = server.files.get(self.path.lstrip("/"))
            if body is None:
                self.send_error(404)
                return None
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return body

        def do_HEAD(self) -> None:
            self._headers()

        def do_GET(self) -> None:
            body = self._headers()
            if body is None:
                return
            step = -(-len(body) // PIECES)
            for start in range(0, len(body), step):
                self.wfile.write(body[start : start + step])
                self.wfile.flush()
                if start + step < len(body):
                    time.sleep(PACE_S)
            # Before this moment the client cannot have had the whole body.
            server.finished[self.path.lstrip("/")] = time.time()
            self.close_connection = True

    return Handler


@pytest.fixture
def slow_http() -> Iterator[SlowServer]:
    state = SlowServer("")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join()


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_progress_lines_appear_while_a_slow_body_streams(
    slow_http: SlowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRTREFIT_PROGRESS_SECONDS", REPORT_S)
    body = os.urandom(PIECES * 64 * 1024)
    uri = slow_http.add("weights.bin", body)
    recorder = _Recorder()
    logger = logging.getLogger("trtrefit.worker.download")
    logger.addHandler(recorder)
    logger.setLevel(logging.INFO)
    try:
        fetched = fetch(uri, tmp_path)
    finally:
        logger.removeHandler(recorder)
    assert fetched.size == len(body)
    during = [r for r in recorder.records if r.created < slow_http.finished["weights.bin"]]
    assert len(during) >= 3, [r.getMessage() for r in recorder.records]
    seen = [getattr(r, "bytes") for r in during]  # noqa: B009 (an extra, not a declared attribute)
    assert seen == sorted(seen) and 0 < seen[0] < seen[-1] < len(body)
    assert all(getattr(r, "total") == len(body) and getattr(r, "bytes_per_second") > 0 for r in during)  # noqa: B009
    assert "of 512.0 KiB" in during[0].getMessage() and "/s" in during[0].getMessage()
    last = recorder.records[-1]
    assert last.getMessage().startswith(f"{uri}: downloaded 512.0 KiB of 512.0 KiB (100%)")
    assert getattr(last, "bytes") == len(body)  # noqa: B009


def test_a_fast_download_says_nothing_and_credentials_never_show() -> None:
    now = [0.0]
    recorder = _Recorder()
    logger = logging.getLogger("trtrefit.worker.download")
    logger.addHandler(recorder)
    logger.setLevel(logging.INFO)
    try:
        with DownloadMeter(
            "s3://key:secret@bucket/ckpt?X-Amz-Signature=abc", None, every=5, clock=lambda: now[0]
        ) as m:
            m.relative_update(10)
            now[0] = 4.9
            m.relative_update(10)
        assert recorder.records == []  # under 5 s: no progress line, no summary
        with DownloadMeter(
            "s3://key:secret@bucket/ckpt?X-Amz-Signature=abc", None, every=5, clock=lambda: now[0]
        ) as m:
            now[0] = 10.0
            m.relative_update(2048)  # 2 KiB in 5.1 s, size unknown
    finally:
        logger.removeHandler(recorder)
    lines = [r.getMessage() for r in recorder.records]
    assert lines[0] == "s3://bucket/ckpt?REDACTED: downloading 2.0 KiB, 402 B/s"
    assert lines[1].startswith("s3://bucket/ckpt?REDACTED: downloaded 2.0 KiB")
    assert all("secret" not in line for line in lines)


def test_refit_in_json_mode_writes_only_json_lines_with_download_progress(
    slow_http: SlowServer, bundle: Bundle, tmp_path: Path
) -> None:
    checkpoint = slow_http.add("good.safetensors", bundle.good.read_bytes())
    env = {**os.environ, "PYTHONPATH": str(REPO / "operator"), "TRTREFIT_PROGRESS_SECONDS": REPORT_S}
    done = subprocess.run(
        [sys.executable, "-m", "trtrefit.cli", "refit", "--log-format", "json",
         "--engine", str(bundle.engine), "--source", str(bundle.source), "--checkpoint", checkpoint,
         "--inputs", str(bundle.inputs), "--publish", str(tmp_path / "out"),
         "--rtol", "0.01", "--atol", "0.01", "--min-cosine-similarity", "0.999",
         "--termination-log", str(tmp_path / "termination-log")],
        capture_output=True, text=True, timeout=240, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]  # every line, or this raises
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    downloads = [line for line in lines if line["logger"] == "trtrefit.worker.download"]
    assert len(downloads) >= 2, done.stderr
    assert all(
        line["uri"] == checkpoint and line["total"] == bundle.good.stat().st_size for line in downloads
    )
    stages = {line.get("stage") for line in lines}
    assert {"fetch", "check", "refit", "verify", "publish"} <= stages
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["outcome"] == "passed"
