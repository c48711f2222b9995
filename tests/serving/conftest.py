"""Fixtures for `trtrefit serve` on the CPU: one small_cnn bundle made by the real compile command's code
(exported backend), checkpoints good and bad, eager PyTorch references (the model factory with
`load_state_dict`, not our swap code), a plain HTTP server that can hold a download back until a test lets
it go, and a helper that runs `trtrefit serve` as a real subprocess on a free loopback port."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import lifeline
from localcluster import free_port
from trtrefit.api.request import RefitRequest
from trtrefit.api.result import Outcome
from trtrefit.serving.service import ServingModel
from trtrefit.worker.compile import CompileRequest, compile_bundle
from trtrefit.worker.samples import build, write_checkpoint

MODEL = "trtrefit.worker.samples:small_cnn"
SHAPE = (4, 3, 32, 32)
TOKEN = "s3cret-token"
NAME = "cnn"


@dataclass(frozen=True)
class Bundle:
    dir: Path
    engine: Path
    source: Path
    inputs: Path
    checkpoints: dict[str, Path]

    def request(self, checkpoint: str | Path, key: str = "a0a0a0a0", **changes: Any) -> RefitRequest:
        """A refit request for this bundle; `checkpoint` is a name of `checkpoints` or a URI/path."""
        uri = (
            self.checkpoints[checkpoint].as_uri()
            if isinstance(checkpoint, str) and checkpoint in self.checkpoints
            else str(checkpoint)
        )
        document: dict[str, Any] = {
            "key": key,
            "engine": {"uri": self.engine.as_uri()},
            "source": {"uri": self.source.as_uri()},
            "checkpoint": {"uri": uri},
            "verify": {"inputs": {"uri": self.inputs.as_uri()}, "rtol": 1e-3, "atol": 1e-3},
        }
        for path, value in changes.items():
            target = document
            *parents, leaf = path.split("__")
            for part in parents:
                target = target.setdefault(part, {})
            target[leaf] = value
        return RefitRequest.model_validate(document)


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """small_cnn compiled with the exported backend; checkpoints a (seed 1), b (seed 2), a jittered one,
    and the bad ones: wrong shape, a NaN, a missing key, a zeroed head (constant outputs)."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("serving-bundle")
    compile_bundle(CompileRequest(output=root, shapes=[SHAPE], backend="exported", model=MODEL))
    ckpt = root / "checkpoints"
    names = {}
    for name, seed, kind in [
        ("a", 1, "none"),
        ("b", 2, "none"),
        ("jitter", 3, "jitter"),
        ("wrong-shape", 1, "wrong-shape"),
        ("nonfinite", 1, "nonfinite"),
    ]:
        names[name] = ckpt / f"{name}.safetensors"
        write_checkpoint(MODEL, seed, kind, names[name])
    state = build(MODEL, 4).state_dict()
    missing = {k: v for k, v in state.items() if k != "8.bias"}
    names["missing-key"] = ckpt / "missing-key.safetensors"
    save_file(missing, str(names["missing-key"]))
    state["8.weight"].zero_()
    state["8.bias"].zero_()
    names["zero-head"] = ckpt / "zero-head.safetensors"
    save_file(state, str(names["zero-head"]))
    return Bundle(root, root / "engine.ep", root / "source.pt2", root / "inputs.safetensors", names)


def eager(checkpoint: Path) -> Callable[[Any], Any]:
    """The reference a user would trust: the model factory, load_state_dict of the checkpoint, eval."""
    import torch
    from safetensors.torch import load_file

    model = build(MODEL, 0)
    model.load_state_dict(load_file(str(checkpoint)))
    model.eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            result: torch.Tensor = model(x)
        return result

    return run


# ---- a download that waits for the test ---------------------------------------------------------------
@dataclass
class HeldFiles:
    """Files over HTTP; a file added with `held=True` is only sent once `release()` is called."""

    base: str
    files: dict[str, tuple[bytes, bool]] = field(default_factory=dict)
    gate: threading.Event = field(default_factory=threading.Event)
    requested: threading.Event = field(default_factory=threading.Event)

    def add(self, name: str, body: bytes, held: bool = False) -> str:
        self.files[name] = (body, held)
        return f"{self.base}/{name}"

    def release(self) -> None:
        self.gate.set()


@pytest.fixture
def held_files() -> Iterator[HeldFiles]:
    files = HeldFiles(base="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def _head(self) -> bytes | None:
            entry = files.files.get(self.path.lstrip("/"))
            if entry is None:
                self.send_error(404)
                return None
            body, held = entry
            if held and self.command == "GET":
                files.requested.set()
                files.gate.wait(timeout=60)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return body

        def do_HEAD(self) -> None:
            self._head()

        def do_GET(self) -> None:
            body = self._head()
            if body is not None:
                self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    files.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield files
    files.release()
    server.shutdown()
    server.server_close()


# ---- `trtrefit serve` as a subprocess ------------------------------------------------------------------
@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def call(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Response:
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return Response(answer.status, answer.read(), dict(answer.headers))
        except urllib.error.HTTPError as exc:
            return Response(exc.code, exc.read(), dict(exc.headers))

    def refit(self, request: RefitRequest, token: str | None = TOKEN) -> Response:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.call("POST", f"/v2/models/{NAME}/refit", request.wire().encode(), headers)

    def status(self, path: str) -> int | None:
        """HTTP status of a GET, None while nothing listens."""
        try:
            return self.call("GET", path).status
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def wait_for(self, path: str, status: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.status(path) == status:
                return
            if self.process.poll() is not None:
                raise AssertionError(f"trtrefit serve exited {self.process.returncode}:\n{self.output()}")
            time.sleep(0.1)
        raise AssertionError(f"GET {path} never answered {status} within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def start_server(
    tmp: Path,
    request: RefitRequest | None,
    token: str | None = TOKEN,
    *extra: str,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """`trtrefit serve` on a free loopback port; returns at once (the caller waits for what it needs)."""
    port = free_port()
    args = [sys.executable, "-m", "trtrefit.cli", "serve", "--model-name", NAME, "--host", "127.0.0.1"]
    args += ["--port", str(port), "--workdir", str(tmp / "work"), "--drain-seconds", "0.5", *extra]
    if request is not None:
        (tmp / "request.json").write_text(request.wire())
        args += ["--request", f"@{tmp / 'request.json'}"]
    if token is not None:
        (tmp / "token").write_text(token + "\n")
        args += ["--token-file", str(tmp / "token")]
    log = tmp / "serve.log"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TRTREFIT_")}
    environment.update(env or {})
    with log.open("wb") as sink:
        # Tied to this test run: it dies with pytest, also when pytest is SIGKILLed (hack/lifeline.py).
        process = subprocess.Popen(
            lifeline.command(args), stdout=sink, stderr=subprocess.STDOUT, env=environment
        )
    return ServerProcess(process, port, log)


@pytest.fixture
def model(bundle: Bundle, tmp_path: Path) -> Iterator[ServingModel]:
    """A ServingModel started on checkpoint a (key aaaa0000), in process."""
    serving = ServingModel("cnn", tmp_path)
    result = serving.start(bundle.request("a", key="aaaa0000"))
    assert result.outcome == Outcome.PASSED, result.message
    yield serving
