"""The desired refit's key and the Job name derived from it: stable, and changed only by what changes the
refitted program."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.api.samples import model
from trtrefit.controller.desired import desired_refit
from trtrefit.controller.naming import job_name


def key(spec: dict[str, Any] | None = None) -> str:
    return desired_refit(model(spec).spec).key


def test_the_key_is_stable_and_label_sized() -> None:
    assert key() == key()
    assert len(key()) == 32 and all(ch in "0123456789abcdef" for ch in key())


@pytest.mark.parametrize(
    "change",
    [
        {"checkpoint": {"uri": "s3://ckpt/resnet50/step-1300.safetensors"}},
        {"checkpoint": {"sha256": "c" * 64}},
        {"engine": {"uri": "s3://models/resnet50/engine-v2.ep"}},
        {"source": {"uri": "s3://models/resnet50/source-v2.pt2"}},
        {"verify": {"rtol": 0.05}},
        {"verify": {"seed": 7}},
    ],
)
def test_what_changes_the_refitted_program_changes_the_key(change: dict[str, Any]) -> None:
    assert key(change) != key()


@pytest.mark.parametrize(
    "change",
    [
        {"publish": {"uri": "s3://other/refits/"}},
        {"refitJob": {"image": "other:1", "backoffLimit": 5}},
        {"serving": {"deploymentName": "other"}},
        {"paused": True},
    ],
)
def test_what_does_not_change_the_program_keeps_the_key(change: dict[str, Any]) -> None:
    assert key(change) == key()


def test_desired_refit_carries_the_checkpoint_and_engine() -> None:
    desired = desired_refit(model({"checkpoint": {"sha256": "c" * 64}}).spec)
    assert desired.checkpoint.uri == "s3://ckpt/resnet50/step-1200.safetensors"
    assert desired.checkpoint.sha256 == "c" * 64
    assert desired.engine.uri == "s3://models/resnet50/engine.ep"


def test_job_names_fit_in_63_characters_and_stay_distinct() -> None:
    assert job_name("resnet50", "0123456789abcdef") == "resnet50-refit-0123456789"
    long_a, long_b = "a" * 60, "a" * 59 + "b"
    assert len(job_name(long_a, "f" * 32)) <= 63
    assert job_name(long_a, "f" * 32) != job_name(long_b, "f" * 32)
    assert job_name(long_a, "f" * 32) == job_name(long_a, "f" * 32)
