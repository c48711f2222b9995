"""Merge patches, operator settings from the environment, the `trtrefit operator` command line."""

from __future__ import annotations

import argparse

import pytest

from trtrefit.controller.commands import add_operator_parser, run_operator
from trtrefit.controller.config import OperatorConfig
from trtrefit.controller.kube import merge_patch


def test_merge_patch_changes_adds_and_removes() -> None:
    old = {"phase": "Refitting", "lastRefit": {"job": "j", "message": "m"}, "history": [1]}
    new = {
        "phase": "Ready",
        "lastRefit": {"job": "j"},
        "history": [1, 2],
        "serving": {"engine": {"uri": "u"}},
    }
    assert merge_patch(old, new) == {
        "phase": "Ready",
        "lastRefit": {"message": None},
        "history": [1, 2],
        "serving": {"engine": {"uri": "u"}},
    }
    assert merge_patch(new, new) == {}
    assert merge_patch({"seconds": 12}, {"seconds": 12.0}) == {}


def test_config_from_environment() -> None:
    assert OperatorConfig.from_env({}) == OperatorConfig()
    config = OperatorConfig.from_env(
        {
            "TRTREFIT_WORKER_IMAGE": "w:1",
            "TRTREFIT_WORKER_COMMAND": "python -m trtrefit.cli",
            "TRTREFIT_GPU_RESOURCE": "amd.com/gpu",
        }
    )
    assert config == OperatorConfig("w:1", ("python", "-m", "trtrefit.cli"), "amd.com/gpu")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_operator_parser(parser.add_subparsers())
    return parser.parse_args(["operator", *argv])


def test_operator_command_line() -> None:
    args = parse(
        "-n", "a", "--namespace", "b", "--metrics-port", "0", "--liveness", "http://0.0.0.0:8081/healthz"
    )
    assert args.namespaces == ["a", "b"] and args.metrics_port == 0 and args.func is run_operator
    assert parse().namespaces is None and parse().metrics_port == 8080
    with pytest.raises(SystemExit):
        parse("-n", "a", "--all-namespaces")
