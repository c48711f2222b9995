"""Fixtures for the worker's tests against real protocol servers on loopback: an S3 server (moto's
server mode, spoken to by s3fs/boto3 over HTTP) and a plain HTTP server that can cut bodies short; plus
one compiled small_cnn bundle and the checkpoints a refit demo needs."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from trtrefit.worker.compile import CompileRequest, compile_bundle
from trtrefit.worker.samples import build, perturb, write_checkpoint

MODEL = "trtrefit.worker.samples:small_cnn"
BUCKET = "models"


@dataclass
class S3:
    endpoint: str
    bucket: str = BUCKET

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def put(self, key: str, path: Path) -> str:
        self.client().upload_file(str(path), self.bucket, key)
        return f"s3://{self.bucket}/{key}"

    def keys(self, prefix: str = "") -> list[str]:
        listing = self.client().list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for item in listing.get("Contents", []))


@pytest.fixture
def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> S3:
    """A fresh bucket, and the standard AWS variables pointing s3fs (and subprocesses) at the server."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    bucket = f"b-{abs(hash(request.node.nodeid)) % 10**10}"
    store = S3(s3_server, bucket)
    store.client().create_bucket(Bucket=bucket)
    return store


@dataclass
class Served:
    body: bytes
    mode: str = "ok"  # ok | truncate (always) | flaky (the first GET is cut short)
    gets: int = 0


@dataclass
class HttpFiles:
    base: str
    files: dict[str, Served] = field(default_factory=dict)

    def add(self, name: str, body: bytes, mode: str = "ok") -> str:
        self.files[name] = Served(body, mode)
        return f"{self.base}/{name}"


def _handler(files: dict[str, Served]) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            return

        def _headers(self) -> Served | None:
            served = files.get(self.path.lstrip("/"))
            if served is None:
                self.send_error(404)
                return None
            self.send_response(200)
            self.send_header("Content-Length", str(len(served.body)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            return served

        def do_HEAD(self) -> None:
            self._headers()

        def do_GET(self) -> None:
            served = self._headers()
            if served is None:
                return
            served.gets += 1
            cut = served.mode == "truncate" or (served.mode == "flaky" and served.gets == 1)
            self.wfile.write(served.body[: len(served.body) // 2] if cut else served.body)
            self.close_connection = True

    return Handler


@pytest.fixture
def http_files() -> Iterator[HttpFiles]:
    files: dict[str, Served] = {}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(files))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield HttpFiles(f"http://{host!s}:{port}", files)
    server.shutdown()
    server.server_close()
    thread.join()


@dataclass(frozen=True)
class Bundle:
    dir: Path
    engine: Path
    source: Path
    inputs: Path
    good: Path
    jitter: Path
    wrong_shape: Path
    nonfinite: Path
    zero_head: Path
    program_checkpoint: Path
    pickle_checkpoint: Path


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """small_cnn compiled with the exported backend, and checkpoints good and bad."""
    import torch
    from safetensors.torch import save_file

    from trtrefit.worker.programs import quiet_torch, save_program

    root = tmp_path_factory.mktemp("bundle")
    compile_bundle(CompileRequest(output=root, shapes=[(4, 3, 32, 32)], backend="exported", model=MODEL))
    ckpt = root / "checkpoints"
    write_checkpoint(MODEL, 1, "none", ckpt / "good.safetensors")
    write_checkpoint(MODEL, 2, "jitter", ckpt / "jitter.safetensors")
    write_checkpoint(MODEL, 1, "wrong-shape", ckpt / "wrong-shape.safetensors")
    write_checkpoint(MODEL, 1, "nonfinite", ckpt / "nonfinite.safetensors")
    state = build(MODEL, 3).state_dict()
    state["8.weight"].zero_()
    state["8.bias"].zero_()
    save_file(state, str(ckpt / "zero-head.safetensors"))
    torch.save(perturb(build(MODEL, 4).state_dict(), "none", 4), ckpt / "good.pt")
    with quiet_torch():
        program = torch.export.export(build(MODEL, 5), (torch.randn(4, 3, 32, 32),))
    save_program(program, ckpt / "good.pt2")
    return Bundle(
        dir=root,
        engine=root / "engine.ep",
        source=root / "source.pt2",
        inputs=root / "inputs.safetensors",
        good=ckpt / "good.safetensors",
        jitter=ckpt / "jitter.safetensors",
        wrong_shape=ckpt / "wrong-shape.safetensors",
        nonfinite=ckpt / "nonfinite.safetensors",
        zero_head=ckpt / "zero-head.safetensors",
        program_checkpoint=ckpt / "good.pt2",
        pickle_checkpoint=ckpt / "good.pt",
    )
