"""HTTP to the serving pods of an InPlace rollout (the only I/O of the controller besides kube.py): read each
pod's ServingState, send a refit request with the bearer token. Short timeouts; no retries here (the next
pass reads the pods again); every answer is validated as the typed model by serving_pods before use.

The paths and statuses are the contract in trtrefit.api.serving; the server's --model-name is the TRTModel's
name."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import urllib3

from trtrefit.api.request import RefitRequest
from trtrefit.api.serving import REFIT_PATH, STATE_PATH
from trtrefit.controller.serving_pods import PodState, PodView, RefitAnswer, parse_answer, parse_state
from trtrefit.controller.views import one_line

CONNECT_SECONDS = 1.0
STATE_SECONDS = 2.0  # a ServingState is served from memory: slow means unwell
MAX_BODY = 1 << 20  # a ServingState or RefitResult is a few KiB
MAX_PARALLEL = 16


def _url(pod: PodView, port: int, path: str) -> str:
    host = f"[{pod.ip}]" if pod.ip and ":" in pod.ip else pod.ip
    return f"http://{host}:{port}{path}"


class PodClient:
    """Talks to `trtrefit serve` in each pod, many pods at a time."""

    def __init__(
        self, *, connect_seconds: float = CONNECT_SECONDS, state_seconds: float = STATE_SECONDS
    ) -> None:
        self.connect_seconds = connect_seconds
        self.state_seconds = state_seconds
        self.http = urllib3.PoolManager(num_pools=64, maxsize=4, retries=False, block=False)

    def _request(
        self,
        method: str,
        url: str,
        *,
        read_seconds: float,
        body: bytes | None = None,
        token: str | None = None,
    ) -> tuple[int | None, bytes, str]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        try:
            response = self.http.request(
                method,
                url,
                body=body,
                headers=headers,
                timeout=urllib3.Timeout(connect=self.connect_seconds, read=read_seconds),
                preload_content=False,
                redirect=False,
            )
        except urllib3.exceptions.HTTPError as exc:
            return None, b"", one_line(f"{type(exc).__name__}: {exc}", 200)
        try:
            data = response.read(MAX_BODY + 1)
        except urllib3.exceptions.HTTPError as exc:
            return None, b"", one_line(f"reading the answer: {type(exc).__name__}: {exc}", 200)
        finally:
            response.release_conn()
        if len(data) > MAX_BODY:
            return None, b"", f"an answer of more than {MAX_BODY} bytes"
        return response.status, data, ""

    def state(self, pod: PodView, port: int, model: str) -> PodState:
        if pod.ip is None:
            return PodState(pod, None, "no pod IP yet")
        status, body, problem = self._request(
            "GET", _url(pod, port, STATE_PATH.format(model=model)), read_seconds=self.state_seconds
        )
        return parse_state(pod, model, status=status, body=body, problem=problem)

    def states(self, pods: Sequence[PodView], port: int, model: str) -> list[PodState]:
        """Every pod's state, read in parallel, in the order given."""
        if not pods:
            return []
        with ThreadPoolExecutor(min(MAX_PARALLEL, len(pods))) as pool:
            return list(pool.map(lambda pod: self.state(pod, port, model), pods))

    def refit(
        self,
        pod: PodView,
        port: int,
        model: str,
        *,
        token: str,
        request: RefitRequest,
        timeout_seconds: float,
    ) -> RefitAnswer:
        """POST the refit request; blocks until the pod answers (it refits and verifies first)."""
        key = request.key or ""
        if pod.ip is None:
            return parse_answer(pod.name, key, status=None, body=b"", seconds=0.0, problem="no pod IP")
        started = time.monotonic()
        status, body, problem = self._request(
            "POST",
            _url(pod, port, REFIT_PATH.format(model=model)),
            read_seconds=timeout_seconds,
            body=request.wire().encode(),
            token=token,
        )
        seconds = time.monotonic() - started
        return parse_answer(pod.name, key, status=status, body=body, seconds=seconds, problem=problem)

    def refit_many(
        self,
        pods: Sequence[PodView],
        port: int,
        model: str,
        *,
        token: str,
        request: RefitRequest,
        timeout_seconds: float,
    ) -> list[RefitAnswer]:
        """One batch: the same request to every pod at once; the answers in the order given."""
        if not pods:
            return []
        with ThreadPoolExecutor(min(MAX_PARALLEL, len(pods))) as pool:
            return list(
                pool.map(
                    lambda pod: self.refit(
                        pod, port, model, token=token, request=request, timeout_seconds=timeout_seconds
                    ),
                    pods,
                )
            )

    def close(self) -> None:
        self.http.clear()
