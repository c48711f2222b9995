"""The InPlace pass end to end over an in-memory stand-in for the API (as test_reconcile_pass does for
Restart) and stand-in pods on loopback addresses that keep their state the way `trtrefit serve` does (refit
to a request; roll back when its checkpoint is "bad"). Real `trtrefit serve` processes and the real API
server run in tests/integration/test_inplace.py; this file checks the loop itself quickly: one pass takes
a bump from the canary to every pod, a failed canary touches nothing else, a lost ConfigMap update is
retried."""

from __future__ import annotations

import copy
import http.server
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from localcluster import free_port
from tests.unit.api.samples import body
from tests.unit.controller.inplace_world import IN_PLACE, NOW, result, state
from tests.unit.controller.objects import apply_merge_patch
from trtrefit.api.request import RefitRequest
from trtrefit.api.result import Outcome
from trtrefit.api.serving import DESIRED_KEY
from trtrefit.controller.config import OperatorConfig
from trtrefit.controller.kube import ConflictError, Obj
from trtrefit.controller.pods import PodClient
from trtrefit.controller.reconcile import reconcile
from trtrefit.controller.serving_pods import token_of

OLD_KEY = "0" * 32


class Pod:
    """A stand-in serving pod: GET state, POST refit (bearer token checked; "bad" checkpoints roll back)."""

    def __init__(self, ip: str, port: int, token: list[str]) -> None:
        self.ip, self.token, self.requests = ip, token, 0
        self.state = state(OLD_KEY)
        pod = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._send(200, pod.state.model_dump_json(by_alias=True).encode())

            def do_POST(self) -> None:
                if self.headers.get("Authorization") != f"Bearer {pod.token[0]}":
                    self._send(401, b'{"error": "unauthorized"}')
                    return
                request = RefitRequest.model_validate_json(
                    self.rfile.read(int(self.headers["Content-Length"]))
                )
                self._send(*pod.refit(request))

            def _send(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((ip, port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def refit(self, request: RefitRequest) -> tuple[int, bytes]:
        self.requests += 1
        key = request.key or ""
        bad = "bad" in request.checkpoint.uri
        answer = result(key, Outcome.VERIFICATION_FAILED if bad else Outcome.PASSED)
        before = self.state.checkpoint
        if bad and before is not None:  # rolled back: the old weights keep serving
            self.state = state(before.key, last=answer, uri=before.uri)
        else:
            self.state = state(key, last=answer, uri=request.checkpoint.uri)
        return (422 if bad else 200), answer.model_dump_json(by_alias=True).encode()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class MemoryCluster:
    """The Cluster calls of an InPlace pass over dicts; resourceVersion checked on ConfigMap patches."""

    def __init__(self, model: Obj, pods: list[Pod]) -> None:
        self.model, self.pods = model, pods
        self.secrets: dict[str, Obj] = {}
        self.config_maps: dict[str, Obj] = {}
        self.conflicts = 0
        self.deployment: dict[str, Any] = {
            "metadata": {"name": "resnet50-server"},
            "spec": {"replicas": len(pods), "selector": {"matchLabels": {"app": "srv"}}},
        }

    def get_model(self, namespace: str, name: str) -> Obj | None:
        return copy.deepcopy(self.model)

    def patch_model_status(self, namespace: str, name: str, patch: Obj) -> Obj:
        self.model["status"] = apply_merge_patch(self.model.get("status", {}), patch)
        return self.model

    def get_deployment(self, namespace: str, name: str) -> Obj | None:
        return copy.deepcopy(self.deployment)

    def patch_deployment(self, namespace: str, name: str, patch: Obj) -> Obj:
        """Only the claim (an annotation) ever reaches an InPlace model's Deployment."""
        assert set(patch) == {"metadata"}, patch
        meta = self.deployment["metadata"]
        meta["annotations"] = {**(meta.get("annotations") or {}), **patch["metadata"]["annotations"]}
        return copy.deepcopy(self.deployment)

    def list_pods(self, namespace: str, selector: str) -> list[Obj]:
        assert selector == "app=srv"
        return [
            {
                "metadata": {"name": f"srv-{i}", "uid": f"u{i}"},
                "status": {
                    "phase": "Running",
                    "podIP": p.ip,
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            }
            for i, p in enumerate(self.pods)
        ]

    def get_secret(self, namespace: str, name: str) -> Obj | None:
        return copy.deepcopy(self.secrets.get(name))

    def create_secret(self, namespace: str, secret: Obj) -> Obj:
        self.secrets[secret["metadata"]["name"]] = copy.deepcopy(secret)
        for pod in self.pods:  # the pods read the token at start
            pod.token[0] = token_of(secret) or ""
        return secret

    def get_config_map(self, namespace: str, name: str) -> Obj | None:
        return copy.deepcopy(self.config_maps.get(name))

    def create_config_map(self, namespace: str, config_map: Obj) -> Obj:
        created = copy.deepcopy(config_map)
        created["metadata"]["resourceVersion"] = "1"
        self.config_maps[created["metadata"]["name"]] = created
        return copy.deepcopy(created)

    def patch_config_map(self, namespace: str, name: str, patch: Obj) -> Obj:
        current = self.config_maps[name]
        if self.conflicts or patch["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"]:
            self.conflicts = max(0, self.conflicts - 1)
            current["metadata"]["resourceVersion"] = str(int(current["metadata"]["resourceVersion"]) + 1)
            raise ConflictError(409, "Conflict", "the object has been modified")
        current["data"] |= patch["data"]
        current["metadata"]["resourceVersion"] = str(int(current["metadata"]["resourceVersion"]) + 1)
        return copy.deepcopy(current)

    def desired_key(self) -> str | None:
        (config_map,) = self.config_maps.values()
        return RefitRequest.model_validate_json(config_map["data"][DESIRED_KEY]).key


@pytest.fixture
def world() -> Iterator[tuple[MemoryCluster, list[Pod]]]:
    port, token = free_port(), [""]
    pods = [Pod(f"127.0.0.{40 + i}", port, token) for i in range(3)]
    model = body({**IN_PLACE, "rollout": {"strategy": "InPlace", "port": port, "maxConcurrent": 1}})
    yield MemoryCluster(model, pods), pods
    for pod in pods:
        pod.stop()


def _pass(cluster: MemoryCluster, clock: datetime = NOW) -> Any:
    return reconcile(cluster, OperatorConfig(), "vision", "resnet50", clock, pods=PodClient())  # type: ignore[arg-type]


def _bump(cluster: MemoryCluster, uri: str) -> None:
    cluster.model["spec"]["checkpoint"] = {"uri": uri}
    cluster.model["metadata"]["generation"] += 1


def _serves(pods: list[Pod]) -> list[str | None]:
    return [p.state.checkpoint.uri if p.state.checkpoint else None for p in pods]


def test_first_pass_creates_the_objects_then_one_pass_takes_a_bump_to_every_pod(
    world: tuple[MemoryCluster, list[Pod]],
) -> None:
    cluster, pods = world
    first = _pass(cluster)
    assert set(cluster.secrets) == {"resnet50-trtrefit-token"} and set(cluster.config_maps) == {
        "resnet50-trtrefit"
    }
    # The stand-in pods were up before the ConfigMap existed: the first pass rolls them to the desired key.
    assert first.phase.value == "Ready"
    assert _serves(pods) == ["s3://ckpt/resnet50/step-1200.safetensors"] * 3

    _bump(cluster, "s3://ckpt/resnet50/step-1300.safetensors")
    bumped = _pass(cluster)
    assert bumped.phase.value == "Ready" and bumped.retry_after is None
    assert _serves(pods) == ["s3://ckpt/resnet50/step-1300.safetensors"] * 3
    assert [p.requests for p in pods] == [2, 2, 2]  # one request per pod per bump
    status = cluster.model["status"]
    assert status["pods"] == {"ready": 3, "current": 3, "summary": "3/3"}
    assert (
        status["lastRefit"]["canary"] == "srv-0" and status["lastRefit"]["rollout"]["outcome"] == "Complete"
    )
    assert cluster.desired_key() == status["serving"]["refitKey"]
    assert [e.reason for e in bumped.events] == [
        "RefitStarted",
        "RolloutStarted",
        "RefitPassed",
        "RolloutComplete",
    ]
    again = _pass(cluster)
    assert not again.wrote_status and again.events == [] and [p.requests for p in pods] == [2, 2, 2]


def test_a_failed_canary_touches_no_other_pod_and_the_config_map_stays(
    world: tuple[MemoryCluster, list[Pod]],
) -> None:
    cluster, pods = world
    _pass(cluster)
    before = cluster.desired_key()
    _bump(cluster, "s3://ckpt/resnet50/bad.safetensors")
    failed = _pass(cluster)
    assert failed.phase.value == "Failed" and failed.retry_after is None
    assert [p.requests for p in pods] == [2, 1, 1]  # only the canary got the bad request
    assert _serves(pods) == ["s3://ckpt/resnet50/step-1200.safetensors"] * 3
    assert cluster.desired_key() == before
    conditions = {c["type"]: c["status"] for c in cluster.model["status"]["conditions"]}
    assert conditions["Stalled"] == "True" and conditions["Verified"] == "False"
    assert "VerificationFailed" in [e.reason for e in failed.events]
    assert _pass(cluster).events == [] and [p.requests for p in pods] == [2, 1, 1]  # nothing retried


def test_a_conflicting_config_map_update_is_read_again_and_retried(
    world: tuple[MemoryCluster, list[Pod]],
) -> None:
    cluster, _ = world
    _pass(cluster)
    cluster.conflicts = 2
    _bump(cluster, "s3://ckpt/resnet50/step-1300.safetensors")
    assert _pass(cluster).phase.value == "Ready"
    assert cluster.desired_key() == cluster.model["status"]["serving"]["refitKey"]


def test_pods_holding_another_token_stall_the_model(world: tuple[MemoryCluster, list[Pod]]) -> None:
    cluster, pods = world
    _pass(cluster)
    pods[0].token[0] = "rotated-elsewhere"
    _bump(cluster, "s3://ckpt/resnet50/step-1300.safetensors")
    refused = _pass(cluster, datetime(2026, 1, 2, 5, 0, tzinfo=UTC))
    assert refused.phase.value == "Pending" and refused.retry_after == 10.0
    stalled = next(c for c in cluster.model["status"]["conditions"] if c["type"] == "Stalled")
    assert stalled["reason"] == "RefitUnauthorized" and "srv-0" in stalled["message"]
    assert [e.reason for e in refused.events] == ["RefitUnauthorized"]
