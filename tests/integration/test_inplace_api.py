"""spec.rollout at the API server: the CEL rules and enums refuse bad values naming the field, publish is
required for Restart only, and the defaults are filled in. No operator runs here."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from tests.integration.world import create_model, get_model, trtmodel

pytestmark = pytest.mark.integration

IN_PLACE = {"strategy": "InPlace"}
MAX = "spec.rollout.maxConcurrent"
# Refused at the API server; run by test_api_validation with the other bad specs.
ROLLOUT_CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("maxConcurrent zero", {"rollout": {**IN_PLACE, "maxConcurrent": 0}},
     [MAX, "a number of pods (at least 1) or a percentage"]),
    ("maxConcurrent 0%", {"rollout": {**IN_PLACE, "maxConcurrent": "0%"}}, [MAX]),
    ("maxConcurrent 101%", {"rollout": {**IN_PLACE, "maxConcurrent": "101%"}}, [MAX]),
    ("maxConcurrent words", {"rollout": {**IN_PLACE, "maxConcurrent": "half"}}, [MAX]),
    ("unknown strategy", {"rollout": {"strategy": "BlueGreen"}},
     ["spec.rollout.strategy", "Unsupported value"]),
    ("port out of range", {"rollout": {**IN_PLACE, "port": 70000}}, ["spec.rollout.port"]),
    ("zero timeout", {"rollout": {**IN_PLACE, "timeoutSeconds": 0}}, ["spec.rollout.timeoutSeconds"]),
    ("Restart without publish", {"publish": None},
     ["spec.publish", "publish is required for the Restart strategy"]),
    ("explicit Restart without publish", {"publish": None, "rollout": {"strategy": "Restart"}},
     ["spec.publish", "publish is required for the Restart strategy"]),
]  # fmt: skip


def _body(change: dict[str, Any]) -> dict[str, Any]:
    body = trtmodel()
    for key, value in change.items():
        if value is None:
            body["spec"].pop(key)
        else:
            body["spec"][key] = value
    return body


@pytest.mark.parametrize("max_concurrent", [1, 7, "1%", "25%", "100%"])
def test_in_place_without_publish_is_accepted(
    kube_api: client.ApiClient, trtmodel_crd: str, namespace: str, max_concurrent: int | str
) -> None:
    body = _body({"publish": None, "rollout": {**IN_PLACE, "maxConcurrent": max_concurrent}})
    create_model(kube_api, namespace, body)
    rollout = get_model(kube_api, namespace)["spec"]["rollout"]
    assert rollout == {
        "strategy": "InPlace",
        "maxConcurrent": max_concurrent,
        "port": 8080,
        "timeoutSeconds": 120,
    }


def test_a_model_without_rollout_gets_the_restart_defaults(
    kube_api: client.ApiClient, trtmodel_crd: str, namespace: str
) -> None:
    create_model(kube_api, namespace, trtmodel())
    spec = get_model(kube_api, namespace)["spec"]
    assert spec["rollout"] == {
        "strategy": "Restart",
        "maxConcurrent": "25%",
        "port": 8080,
        "timeoutSeconds": 120,
    }
    assert spec["publish"] == {"uri": "s3://models/tiny/refits/"}
