"""The InPlace objects (token Secret, desired-refit ConfigMap, the serving env) and the pure readers of pods,
answers, ConfigMaps and Secrets, on real objects as the API returns them."""

from __future__ import annotations

import base64
import json

import pytest

from tests.unit.controller.inplace_world import OLD, desired_of, in_place_model, result, state
from trtrefit.api.request import RefitRequest
from trtrefit.api.result import Outcome
from trtrefit.api.serving import DESIRED_ENV, DESIRED_KEY, TOKEN_ENV, TOKEN_KEY
from trtrefit.controller.inplace_objects import (
    build_config_map_update,
    build_desired_config_map,
    build_token_secret,
    serving_env,
)
from trtrefit.controller.serving_pods import (
    Answer,
    PodView,
    desired_config,
    label_selector,
    live_pods,
    parse_answer,
    parse_state,
    token_of,
)

M = in_place_model()
DESIRED, REQUEST = desired_of(M)
VIEW = PodView("server-a", "uid-a", "127.0.0.5", True)


def _owner(manifest: dict[str, object]) -> dict[str, object]:
    meta = manifest["metadata"]
    assert isinstance(meta, dict)
    (owner,) = meta["ownerReferences"]
    return dict(owner)


def test_token_secret_is_owned_and_holds_the_token_base64() -> None:
    secret = build_token_secret(M, "tok-123")
    assert secret["metadata"]["name"] == "resnet50-trtrefit-token"
    assert secret["metadata"]["namespace"] == "vision"
    assert _owner(secret)["uid"] == M.metadata.uid and _owner(secret)["kind"] == "TRTModel"
    assert base64.b64decode(secret["data"][TOKEN_KEY]) == b"tok-123"
    assert token_of(secret) == "tok-123"


def test_config_map_holds_the_desired_request_with_its_key() -> None:
    config_map = build_desired_config_map(M, REQUEST)
    assert config_map["metadata"]["name"] == "resnet50-trtrefit" and _owner(config_map)["controller"] is True
    request = RefitRequest.model_validate_json(config_map["data"][DESIRED_KEY])
    assert request.key == DESIRED.key and request.checkpoint.uri == M.spec.checkpoint.uri
    assert request.publish is None  # InPlace pods refit in memory
    config_map["metadata"]["resourceVersion"] = "9"
    seen = desired_config(config_map, M.metadata.uid or "")
    assert seen.owned and seen.request == REQUEST and seen.resource_version == "9"
    patch = build_config_map_update(seen, REQUEST)
    assert patch["metadata"]["resourceVersion"] == "9" and patch["data"] == {DESIRED_KEY: REQUEST.wire()}


def test_serving_env_reads_both_objects_and_neither_is_optional() -> None:
    env = {e["name"]: e["valueFrom"] for e in serving_env("resnet50")}
    assert env[TOKEN_ENV] == {"secretKeyRef": {"name": "resnet50-trtrefit-token", "key": TOKEN_KEY}}
    assert env[DESIRED_ENV] == {"configMapKeyRef": {"name": "resnet50-trtrefit", "key": DESIRED_KEY}}


def test_a_foreign_or_broken_config_map_is_seen_as_such() -> None:
    config_map = build_desired_config_map(M, REQUEST)
    assert not desired_config(config_map, "another-uid").owned
    config_map["data"] = {DESIRED_KEY: '{"checkpoint": 1}'}
    seen = desired_config(config_map, M.metadata.uid or "")
    assert seen.request is None and "not a RefitRequest" in seen.problem
    config_map["data"] = {}
    assert desired_config(config_map, M.metadata.uid or "").problem == f"it has no key {DESIRED_KEY}"


@pytest.mark.parametrize("data", [{}, {TOKEN_KEY: ""}, {TOKEN_KEY: "%%%"}, {TOKEN_KEY: "YSBi"}])  # "a b"
def test_an_unusable_token_is_none(data: dict[str, str]) -> None:
    assert token_of({"data": data}) is None


def test_live_pods_are_sorted_and_exclude_terminating_and_finished_ones() -> None:
    def raw(name: str, **extra: object) -> dict[str, object]:
        status = {
            "phase": "Running",
            "podIP": "10.1.1.1",
            "conditions": [{"type": "Ready", "status": "True"}],
        }
        return {"metadata": {"name": name, "uid": name, **extra}, "status": status}

    pods = [raw("c"), raw("a"), raw("b", deletionTimestamp="2026-01-01T00:00:00Z"), raw("d")]
    pods[3]["status"] = {"phase": "Failed"}
    views = live_pods(pods)
    assert [v.name for v in views] == ["a", "c"] and views[0].ready and views[0].ip == "10.1.1.1"


def test_label_selector_follows_the_deployment_selector() -> None:
    selector = {
        "matchLabels": {"app": "srv", "tier": "gpu"},
        "matchExpressions": [
            {"key": "track", "operator": "In", "values": ["a", "b"]},
            {"key": "canary", "operator": "DoesNotExist"},
        ],
    }
    assert label_selector({"spec": {"selector": selector}}) == "app=srv,tier=gpu,track in (a,b),!canary"
    assert label_selector({"spec": {"selector": {}}}) is None  # never every pod of the namespace


def test_a_pod_state_is_trusted_only_as_a_valid_serving_state_of_this_model() -> None:
    good = state(OLD).model_dump_json(by_alias=True)
    assert parse_state(VIEW, "resnet50", status=200, body=good.encode()).state == state(OLD)
    wrong_model = parse_state(VIEW, "other", status=200, body=good.encode())
    assert wrong_model.state is None and "--model-name" in wrong_model.problem
    extra = json.dumps({**json.loads(good), "surprise": 1}).encode()
    assert "not a ServingState" in parse_state(VIEW, "resnet50", status=200, body=extra).problem
    assert parse_state(VIEW, "resnet50", status=404, body=b'{"error":"no"}').problem.startswith("HTTP 404")
    assert parse_state(VIEW, "resnet50", status=None, body=b"", problem="timed out").problem == "timed out"


def test_refit_answers_are_read_by_their_typed_outcome_and_key() -> None:
    key = DESIRED.key
    passed = result(key).model_dump_json(by_alias=True).encode()
    failed = result(key, Outcome.VERIFICATION_FAILED).model_dump_json(by_alias=True).encode()
    superseded = result(key, Outcome.SUPERSEDED).model_dump_json(by_alias=True).encode()

    def read(status: int | None, body: bytes) -> Answer:
        return parse_answer("a", key, status=status, body=body, seconds=0.1).answer

    assert read(200, passed) is Answer.PASSED
    assert read(422, failed) is Answer.FAILED
    assert read(409, superseded) is Answer.SUPERSEDED
    assert read(401, b'{"error": "bad token"}') is Answer.UNAUTHORIZED
    assert read(503, b'{"error": "shutting down"}') is Answer.UNKNOWN
    assert read(None, b"") is Answer.UNKNOWN
    other = parse_answer("a", OLD, status=200, body=passed, seconds=0.1)
    assert other.answer is Answer.UNKNOWN and "not " + OLD in other.problem
