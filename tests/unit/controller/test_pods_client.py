"""controller.pods over real HTTP on loopback addresses. The answers a real `trtrefit serve` gives are
exercised in tests/integration/test_inplace.py; here a small stand-in server produces on demand what a real
one cannot: a wrong token check result, junk, an oversized body, a hang, a dead port. It also records what the
client sent (path, bearer token, body), which the real server does not expose."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from pydantic import BaseModel

from localcluster import free_port
from tests.unit.controller.inplace_world import OLD, desired_of, in_place_model, result, state
from trtrefit.api.request import RefitRequest
from trtrefit.api.result import Outcome
from trtrefit.controller.pods import MAX_BODY, PodClient
from trtrefit.controller.serving_pods import Answer, PodView

M = in_place_model()
_, REQUEST = desired_of(M)
KEY = REQUEST.key or ""
Reply = Callable[[str, bytes], tuple[int, bytes]]


@dataclass
class StandIn:
    """One pod's HTTP endpoint: `reply(method path, body)` decides the answer; requests are recorded."""

    ip: str
    port: int
    reply: Reply
    seen: list[tuple[str, str, bytes]] = field(default_factory=list)  # (method path, authorization, body)

    def start(self) -> http.server.ThreadingHTTPServer:
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                line = f"{self.command} {self.path}"
                stand_in.seen.append((line, self.headers.get("Authorization", ""), body))
                status, payload = stand_in.reply(line, body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer((self.ip, self.port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


@pytest.fixture
def pods() -> Iterator[Callable[[Reply], tuple[PodView, StandIn]]]:
    servers: list[http.server.ThreadingHTTPServer] = []
    port = free_port()

    def make(reply: Reply) -> tuple[PodView, StandIn]:
        ip = f"127.0.0.{20 + len(servers)}"
        stand_in = StandIn(ip, port, reply)
        servers.append(stand_in.start())
        return PodView(f"pod-{len(servers)}", f"uid-{len(servers)}", ip, True), stand_in

    yield make
    for server in servers:
        server.shutdown()
        server.server_close()


def _json(model: BaseModel) -> bytes:
    return model.model_dump_json(by_alias=True).encode()


def test_states_are_read_in_parallel_from_each_pod_ip(
    pods: Callable[[Reply], tuple[PodView, StandIn]],
) -> None:
    def slow(line: str, body: bytes) -> tuple[int, bytes]:
        time.sleep(0.5)
        return 200, _json(state(OLD))

    made = [pods(slow) for _ in range(4)]
    client = PodClient()
    started = time.monotonic()
    states = client.states([view for view, _ in made], made[0][1].port, "resnet50")
    assert time.monotonic() - started < 1.5  # four half-second answers at once, not one after another
    assert [s.state == state(OLD) for s in states] == [True] * 4
    assert made[0][1].seen[0][0] == "GET /v2/models/resnet50/trtrefit"


def test_a_refit_carries_the_token_and_the_request_and_reads_the_typed_answer(
    pods: Callable[[Reply], tuple[PodView, StandIn]],
) -> None:
    view, stand_in = pods(lambda line, body: (422, _json(result(KEY, Outcome.VERIFICATION_FAILED))))
    answer = PodClient().refit(
        view, stand_in.port, "resnet50", token="tok", request=REQUEST, timeout_seconds=5
    )
    assert answer.answer is Answer.FAILED and answer.result is not None and answer.seconds > 0
    line, authorization, body = stand_in.seen[0]
    assert line == "POST /v2/models/resnet50/refit" and authorization == "Bearer tok"
    assert RefitRequest.model_validate_json(body) == REQUEST


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (lambda line, body: (401, b'{"error": "unauthorized"}'), Answer.UNAUTHORIZED),
        (lambda line, body: (200, b"<html>proxy error</html>"), Answer.UNKNOWN),
        (lambda line, body: (200, _json(result(OLD))), Answer.UNKNOWN),  # an answer for another refit
        (lambda line, body: (200, b"x" * (MAX_BODY + 10)), Answer.UNKNOWN),
        (lambda line, body: (409, _json(result(KEY, Outcome.SUPERSEDED))), Answer.SUPERSEDED),
    ],
)
def test_answers_that_are_not_a_result_for_this_request_are_no_verdict(
    pods: Callable[[Reply], tuple[PodView, StandIn]], reply: Reply, expected: Answer
) -> None:
    view, stand_in = pods(reply)
    answer = PodClient().refit(view, stand_in.port, "resnet50", token="t", request=REQUEST, timeout_seconds=5)
    assert answer.answer is expected and (answer.result is None) == (expected is not Answer.SUPERSEDED)


def test_a_hanging_pod_and_a_dead_port_are_unknown_with_the_reason(
    pods: Callable[[Reply], tuple[PodView, StandIn]],
) -> None:
    def hang(line: str, body: bytes) -> tuple[int, bytes]:
        time.sleep(3)
        return 200, _json(state(OLD))

    view, stand_in = pods(hang)
    client = PodClient(state_seconds=0.3)
    seen = client.state(view, stand_in.port, "resnet50")
    assert seen.state is None and "ReadTimeoutError" in seen.problem
    dead = PodView("gone", "u", "127.0.0.29", True)
    assert "Error" in client.state(dead, free_port(), "resnet50").problem
    late = client.refit(view, stand_in.port, "resnet50", token="t", request=REQUEST, timeout_seconds=0.3)
    assert late.answer is Answer.UNKNOWN and "Timeout" in late.problem
    assert client.state(PodView("new", "u", None, False), 1, "m").problem == "no pod IP yet"
