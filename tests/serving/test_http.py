"""`trtrefit serve` as a real subprocess on loopback: the Open Inference Protocol through Triton's own client,
the refit endpoint's auth and statuses, state and metrics, and ~20 hot refits under concurrent load where
every answer is computed wholly by one checkpoint."""

from __future__ import annotations

import json
import threading
import urllib.error
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.serving.conftest import NAME, SHAPE, TOKEN, Bundle, HeldFiles, ServerProcess, eager, start_server
from trtrefit.api.result import RefitResult
from trtrefit.api.serving import ServingState
from trtrefit.worker.storage import hash_file

X = torch.randn(SHAPE, generator=torch.Generator().manual_seed(11))


@pytest.fixture(scope="module")
def server(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(tmp_path_factory.mktemp("serve"), bundle.request("a", key="aaaa0000"))
    try:
        process.wait_for("/v2/health/ready", 200)
        yield process
    finally:
        code = process.stop()
        assert code == 0, process.output()


def served_key(server: ServerProcess) -> str | None:
    state = ServingState.model_validate_json(server.call("GET", f"/v2/models/{NAME}/trtrefit").body)
    return state.checkpoint.key if state.checkpoint else None


def test_protocol_through_the_triton_client(server: ServerProcess, bundle: Bundle) -> None:
    client = triton.InferenceServerClient(server.address)
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME)
        assert not client.is_model_ready("elsewhere")
        meta = client.get_server_metadata()
        assert meta["name"] == "trtrefit" and "binary_tensor_data" in meta["extensions"]
        model = client.get_model_metadata(NAME)
        assert model["inputs"] == [{"name": "input_0", "datatype": "FP32", "shape": list(SHAPE)}]
        assert model["outputs"] == [{"name": "output_0", "datatype": "FP32", "shape": [4, 10]}]
        state = ServingState.model_validate(model["trtrefit"])
        assert (
            state.checkpoint is not None and state.checkpoint.sha256 == hash_file(bundle.checkpoints["a"])[0]
        )
        expected = eager(bundle.checkpoints["a"])(X).numpy()
        for binary in (True, False):
            tensor = triton.InferInput("input_0", list(SHAPE), "FP32")
            tensor.set_data_from_numpy(X.numpy(), binary_data=binary)
            wanted = [triton.InferRequestedOutput("output_0", binary_data=binary)]
            result = client.infer(NAME, [tensor], outputs=wanted, request_id="r-1")
            assert np.allclose(result.as_numpy("output_0"), expected, atol=1e-5), binary
            assert result.get_response()["id"] == "r-1"
        default = client.infer(NAME, [tensor])  # no outputs named: tritonclient asks for binary ones
        assert np.allclose(default.as_numpy("output_0"), expected, atol=1e-5)
        with pytest.raises(InferenceServerException, match="does not fit") as wrong:
            bad = triton.InferInput("input_0", [4, 3, 32], "FP32")
            bad.set_data_from_numpy(X.numpy()[..., 0])
            client.infer(NAME, [bad])
        assert str(wrong.value.status()) == "400"
        with pytest.raises(InferenceServerException, match="unknown model") as unknown:
            client.infer("elsewhere", [tensor])
        assert str(unknown.value.status()) == "404"
    finally:
        client.close()


def test_errors_are_the_protocols_json(server: ServerProcess) -> None:
    answer = server.call("POST", f"/v2/models/{NAME}/infer", b'{"inputs": [{"name": "input_0"}]}')
    assert answer.status == 400 and "shape" in answer.json()["error"]
    answer = server.call("GET", "/v2/nothing-here")
    assert answer.status == 404 and set(answer.json()) == {"error"}


def test_refit_needs_the_token(server: ServerProcess, bundle: Bundle) -> None:
    before = served_key(server)
    missing = server.refit(bundle.request("b", key="bbbb0000"), token=None)
    assert missing.status == 401 and "Bearer" in missing.json()["error"]
    assert missing.headers.get("www-authenticate", missing.headers.get("WWW-Authenticate")) == "Bearer"
    wrong = server.refit(bundle.request("b", key="bbbb0000"), token="guess")
    assert wrong.status == 401 and "wrong refit token" in wrong.json()["error"]
    garbage = server.call(
        "POST",
        f"/v2/models/{NAME}/refit",
        b'{"checkpoint": {}}',
        {"Authorization": f"Bearer {TOKEN}"},
    )
    assert garbage.status == 400 and "not a RefitRequest" in garbage.json()["error"]
    assert served_key(server) == before


def test_refit_statuses_and_rollback(server: ServerProcess, bundle: Bundle) -> None:
    before = served_key(server)
    wrong = server.refit(bundle.request("wrong-shape", key="cccc0000"))
    assert wrong.status == 422
    result = RefitResult.model_validate_json(wrong.body)
    assert result.outcome.value == "error" and "shape" in result.message and result.key == "cccc0000"
    constant = server.refit(bundle.request("zero-head", key="dddd0000"))
    assert constant.status == 422
    assert RefitResult.model_validate_json(constant.body).outcome.value == "verification_failed"
    assert served_key(server) == before
    state = ServingState.model_validate_json(server.call("GET", f"/v2/models/{NAME}/trtrefit").body)
    assert state.failed("dddd0000") is not None


def test_superseded_is_409(server: ServerProcess, bundle: Bundle, held_files: HeldFiles) -> None:
    slow = held_files.add("slow.safetensors", bundle.checkpoints["a"].read_bytes(), held=True)
    with ThreadPoolExecutor(max_workers=3) as pool:
        first = pool.submit(server.refit, bundle.request(slow, key="11110000"))
        assert held_files.requested.wait(30)
        queued = pool.submit(server.refit, bundle.request("b", key="22220000"))
        _wait_until_queued(server)
        newest = pool.submit(server.refit, bundle.request("a", key="33330000"))
        assert queued.result(timeout=30).status == 409
        held_files.release()
        assert first.result(timeout=60).status == 200
        assert newest.result(timeout=60).status == 200
    assert served_key(server) == "33330000"


def _wait_until_queued(server: ServerProcess) -> None:
    """The server says which refit runs, not which waits: give the second request time to arrive."""
    threading.Event().wait(1.0)


def test_metrics(server: ServerProcess, bundle: Bundle) -> None:
    text = server.call("GET", "/metrics").body.decode()
    for name in (
        'trtrefit_serve_requests_total{model="cnn",outcome="ok"}',
        "trtrefit_serve_request_seconds_bucket",
        'trtrefit_serve_refits_total{model="cnn",outcome="passed"}',
        'trtrefit_serve_refit_stage_seconds_bucket{le="0.001",model="cnn",stage="apply"}',
        "trtrefit_serve_refit_lock_seconds_count",
        'trtrefit_serve_ready{model="cnn"} 1.0',
    ):
        assert name in text, name
    info = next(line for line in text.splitlines() if line.startswith("trtrefit_serve_checkpoint_info"))
    key = served_key(server)
    assert f'key="{key}"' in info and 'sha256="' in info


def _binary_infer(server: ServerProcess) -> tuple[int, np.ndarray | None]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input_0",
                    "shape": list(SHAPE),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": X.numel() * 4},
                }
            ]
        }
    ).encode()
    answer = server.call(
        "POST",
        f"/v2/models/{NAME}/infer",
        header + X.numpy().tobytes(),
        {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
    )
    if answer.status != 200:
        return answer.status, None
    (output,) = answer.json()["outputs"]
    return 200, np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def test_hot_refits_under_load_every_answer_is_one_checkpoints(server: ServerProcess, bundle: Bundle) -> None:
    references = {name: eager(bundle.checkpoints[name])(X).numpy() for name in ("a", "b")}
    assert not np.allclose(references["a"], references["b"], atol=1e-2)
    stop = threading.Event()
    seen: list[tuple[int, np.ndarray | None]] = []
    errors: list[str] = []

    def client() -> None:
        while not stop.is_set():
            try:
                seen.append(_binary_infer(server))
            except (urllib.error.URLError, ConnectionError) as exc:
                errors.append(repr(exc))

    threads = [threading.Thread(target=client) for _ in range(3)]
    for thread in threads:
        thread.start()
    outcomes = []
    try:
        for i in range(20):
            name = "b" if i % 2 == 0 else "a"
            answer = server.refit(bundle.request(name, key=f"{i:02d}{name * 6}"))
            outcomes.append((answer.status, RefitResult.model_validate_json(answer.body)))
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not errors, errors[:3]
    assert all(status == 200 for status, _ in outcomes), [r.message for s, r in outcomes if s != 200]
    assert all(r.timings["lock"] < 5 for _, r in outcomes)
    assert len(seen) >= 40, f"only {len(seen)} requests under load"
    assert all(status == 200 for status, _ in seen), "a request failed while refitting"
    which = []
    for _, output in seen:
        assert output is not None
        matches = [n for n, ref in references.items() if np.allclose(output, ref, atol=1e-4, rtol=1e-4)]
        assert len(matches) == 1, "an answer computed by no single checkpoint (mixed weights?)"
        which.append(matches[0])
    assert {"a", "b"} <= set(which), "both checkpoints served during the run"
    assert served_key(server) == "19aaaaaa"


def test_state_of_the_server(server: ServerProcess, tmp_path: Path) -> None:
    answer = server.call("GET", f"/v2/models/{NAME}/trtrefit")
    state = ServingState.model_validate_json(answer.body)
    assert state.model == NAME and state.backend == "exported" and state.ready
    assert state.last_refit is not None and state.refitting is None
    assert server.call("GET", "/v2/models/other/trtrefit").status == 404
