"""A server refit never runs code from a checkpoint: a .pt2 whose weight is pickled with a payload is
refused before torch.export.load sees it, the payload's marker file never appears, and the old weights keep
serving (the worker's side of this is tests/worker/test_archive_guard.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.serving.conftest import SHAPE, Bundle, eager
from tests.worker.poisoned import pickled_weight
from trtrefit.api.result import Outcome
from trtrefit.serving.service import ServingModel

X = torch.randn(SHAPE, generator=torch.Generator().manual_seed(11))


def test_a_poisoned_checkpoint_is_refused_and_nothing_runs(bundle: Bundle, tmp_path: Path) -> None:
    serving = ServingModel("cnn", tmp_path)
    started = serving.start(bundle.request("a", key="aaaa1111"))
    assert started.outcome == Outcome.PASSED, started.message
    marker = tmp_path.parent / f"{tmp_path.name}-payload-ran"
    poisoned = pickled_weight(bundle.source, bundle.dir / "poisoned.pt2", marker)

    result = serving.refit(bundle.request(poisoned.as_uri(), key="bbbb1111"))

    assert result.outcome == Outcome.ERROR
    assert "refusing to load" in result.message and "pickled" in result.message, result.message
    assert not marker.exists(), "the payload ran"
    (out,) = serving.infer([X])
    assert torch.allclose(out, eager(bundle.checkpoints["a"])(X), atol=1e-5, rtol=1e-4)
    assert serving.state().serves("aaaa1111")
