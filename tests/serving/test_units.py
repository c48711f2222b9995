"""The pure parts of the server: the tensor codec (JSON and Triton's binary extension), the supersede gate,
the command's configuration, URI redaction, and the exported live program's apply/rollback."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from tests.serving.conftest import SHAPE, Bundle, eager
from trtrefit.api.redact import redact_text, redact_uri
from trtrefit.api.serving import DESIRED_ENV, TOKEN_ENV
from trtrefit.serving.commands import ConfigError, read_request, read_token
from trtrefit.serving.exported import ExportedLive
from trtrefit.serving.gate import RefitGate, SupersededError
from trtrefit.serving.protocol import InferenceRequest
from trtrefit.serving.tensors import ProtocolError, decode_request, encode_response
from trtrefit.worker.errors import WorkerError


def _binary_body(tensors: dict[str, torch.Tensor], datatype: str) -> tuple[bytes, str]:
    inputs = [
        {
            "name": n,
            "shape": list(t.shape),
            "datatype": datatype,
            "parameters": {"binary_data_size": t.nbytes},
        }
        for n, t in tensors.items()
    ]
    head = json.dumps({"inputs": inputs}).encode()
    raw = b"".join(t.contiguous().view(torch.uint8).numpy().tobytes() for t in tensors.values())
    return head + raw, str(len(head))


@pytest.mark.parametrize(
    ("datatype", "dtype"),
    [("FP32", torch.float32), ("FP16", torch.float16), ("BF16", torch.bfloat16), ("INT64", torch.int64)],
)
def test_binary_inputs_decode_to_the_same_tensors(datatype: str, dtype: torch.dtype) -> None:
    a = (torch.randn(2, 3) * 10).to(dtype)
    b = (torch.randn(4) * 10).to(dtype)
    body, size = _binary_body({"a": a, "b": b}, datatype)
    decoded = decode_request(body, size)
    assert [t.dtype for t in decoded.tensors] == [dtype, dtype]
    assert torch.equal(decoded.tensors[0], a) and torch.equal(decoded.tensors[1], b)


def test_json_inputs_nested_or_flat() -> None:
    flat = {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}
    nested = {**flat, "data": [[1, 2], [3, 4]]}
    for item in (flat, nested):
        (tensor,) = decode_request(json.dumps({"inputs": [item]}).encode(), None).tensors
        assert torch.equal(tensor, torch.tensor([[1.0, 2.0], [3.0, 4.0]]))


@pytest.mark.parametrize(
    ("body", "size", "says"),
    [
        (b"{", None, "not an inference request"),
        (b'{"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}', None, "needs 3"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}', None, "BYTES"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}', None, "neither data"),
        (b'{"inputs": []}', "99", "does not fit a body"),
        (b'{"inputs": []}xx', "14", "2 bytes of binary data"),
        (
            b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", '
            b'"parameters": {"binary_data_size": 4}}]}',
            None,
            "needs 8 bytes",
        ),
    ],
)
def test_bad_requests_name_the_problem(body: bytes, size: str | None, says: str) -> None:
    with pytest.raises(ProtocolError, match=says):
        decode_request(body, size)


def test_outputs_binary_when_asked_json_otherwise() -> None:
    out = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    as_json, size = encode_response("m", InferenceRequest(inputs=[]), ["y"], [out])
    assert size is None and json.loads(as_json)["outputs"][0]["data"] == [0, 1, 2, 3, 4, 5]
    request = InferenceRequest.model_validate(
        {"id": "7", "inputs": [], "parameters": {"binary_data_output": True}}
    )
    body, size = encode_response("m", request, ["y"], [out])
    assert size is not None
    head = json.loads(body[:size])
    assert head["id"] == "7" and head["outputs"][0]["parameters"] == {"binary_data_size": 24}
    assert torch.equal(torch.frombuffer(bytearray(body[size:]), dtype=torch.float32).reshape(2, 3), out)
    with pytest.raises(ProtocolError, match="unknown output"):
        encode_response(
            "m", InferenceRequest.model_validate({"inputs": [], "outputs": [{"name": "z"}]}), ["y"], [out]
        )


def test_gate_runs_one_at_a_time_and_the_newest_waiting_wins() -> None:
    gate = RefitGate()
    order: list[str] = []
    release = threading.Event()
    outcomes: dict[str, str] = {}

    def refit(label: str) -> None:
        try:
            with gate.turn(label):
                order.append(label)
                if label == "first":
                    release.wait(10)
            outcomes[label] = "ran"
        except SupersededError as exc:
            outcomes[label] = f"superseded by {exc.newer}"

    first = threading.Thread(target=refit, args=("first",))
    first.start()
    while gate.running != "first":
        threading.Event().wait(0.01)
    second = threading.Thread(target=refit, args=("second",))
    second.start()
    while gate._queued is None:
        threading.Event().wait(0.01)
    third = threading.Thread(target=refit, args=("third",))
    third.start()
    second.join(10)
    assert outcomes == {"second": "superseded by third"}
    release.set()
    for thread in (first, third):
        thread.join(10)
    assert order == ["first", "third"] and outcomes["third"] == "ran" and gate.running is None


def test_request_from_flag_file_or_environment(bundle: Bundle, tmp_path: Path) -> None:
    wire = bundle.request("a", key="abcdef12").wire()
    (tmp_path / "r.json").write_text(wire)
    assert read_request(wire, {}).key == "abcdef12"
    assert read_request(f"@{tmp_path / 'r.json'}", {}).key == "abcdef12"
    assert read_request(None, {DESIRED_ENV: wire}).key == "abcdef12"
    with pytest.raises(ConfigError, match=r"\$TRTREFIT_DESIRED_REFIT is not a RefitRequest: engine"):
        read_request(None, {DESIRED_ENV: '{"checkpoint": {"uri": "file:///x"}}'})
    with pytest.raises(ConfigError, match="no refit request"):
        read_request(None, {DESIRED_ENV: ""})


def test_token_from_file_or_environment(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("tok\n")
    (tmp_path / "empty").write_text("\n")
    assert read_token(str(tmp_path / "t"), {TOKEN_ENV: "other"}) == "tok"
    assert read_token(None, {TOKEN_ENV: " env "}) == "env"
    assert read_token(None, {}) is None
    with pytest.raises(ConfigError, match="empty"):
        read_token(str(tmp_path / "empty"), {})


def test_redaction_drops_userinfo_and_queries() -> None:
    assert redact_uri("s3://key:secret@bucket/k.safetensors") == "s3://bucket/k.safetensors"
    signed = "https://h/k.safetensors?X-Amz-Signature=abc"
    assert redact_uri(signed) == "https://h/k.safetensors?REDACTED"
    assert redact_text(f"{signed}: not found", [signed]) == "https://h/k.safetensors?REDACTED: not found"
    assert redact_uri("file:///tmp/a") == "file:///tmp/a"


def test_exported_live_applies_and_rolls_back(bundle: Bundle) -> None:
    from safetensors.torch import load_file

    live = ExportedLive(bundle.engine, "engine", None, "cpu")
    x = torch.randn(SHAPE)
    b = live.stage(load_file(str(bundle.checkpoints["b"])))
    live.apply(live.stage(load_file(str(bundle.checkpoints["a"]))))
    before = live.current()
    (out_a,) = live.infer([x])
    live.apply(b)
    (out_b,) = live.infer([x])
    live.apply(before)
    (again,) = live.infer([x])
    assert torch.allclose(out_a, eager(bundle.checkpoints["a"])(x), atol=1e-5)
    assert torch.allclose(out_b, eager(bundle.checkpoints["b"])(x), atol=1e-5)
    assert torch.equal(again, out_a)
    with pytest.raises(WorkerError, match=r"missing key '8\.bias'"):
        live.stage(load_file(str(bundle.checkpoints["missing-key"])))
    with pytest.raises(TypeError):
        live.apply({"not": "staged"})
