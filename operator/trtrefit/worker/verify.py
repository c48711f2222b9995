"""Compare the refitted engine's outputs with the PyTorch reference, output by output.

An output passes when every element satisfies |a - r| <= atol + rtol * |r| (torch.allclose), the cosine
similarity of the flattened tensors reaches the minimum, and both sides are finite. A reference output
whose elements are all equal fails on its own: comparing constants (a zero-initialised head, say)
proves nothing about the refit. Reported relative error is max |a - r| / max(|r|, atol).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from trtrefit.api.result import OutputCheck, Verification

if TYPE_CHECKING:
    import torch

# JSON has no inf/NaN: a failed or non-finite comparison reports the largest finite float.
WORST = sys.float_info.max


@dataclass(frozen=True)
class Tolerances:
    rtol: float
    atol: float
    min_cosine_similarity: float


@dataclass(frozen=True)
class Report:
    """The numbers for the result plus one line saying why it failed (or what passed)."""

    verification: Verification
    message: str


def _finite(value: float) -> float:
    return value if math.isfinite(value) else WORST


def _failed(name: str, why: str) -> tuple[OutputCheck, str]:
    check = OutputCheck(
        name=name, max_abs_error=WORST, max_rel_error=WORST, cosine_similarity=-1.0, passed=False
    )
    return check, f"{name}: {why}"


def compare(
    name: str, actual: torch.Tensor, reference: torch.Tensor, tol: Tolerances
) -> tuple[OutputCheck, str]:
    """One output's numbers and, when it fails, the reason (empty string when it passes)."""
    import torch

    a = actual.detach().to("cpu", torch.float64).reshape(-1)
    r = reference.detach().to("cpu", torch.float64).reshape(-1)
    if tuple(actual.shape) != tuple(reference.shape):
        return _failed(name, f"shape {list(actual.shape)} differs from the reference {list(reference.shape)}")
    if not bool(torch.isfinite(r).all()):
        return _failed(name, "the reference output holds NaN/inf (non-finite weights in the checkpoint?)")
    if not bool(torch.isfinite(a).all()):
        return _failed(name, "the refitted engine's output holds NaN/inf")
    if r.numel() > 1 and bool((r == r[0]).all()):
        return _failed(
            name, f"the reference output is constant ({float(r[0]):g} everywhere), nothing to verify"
        )
    error = (a - r).abs()
    max_abs = float(error.max()) if error.numel() else 0.0
    max_rel = float((error / r.abs().clamp_min(max(tol.atol, 1e-12))).max()) if error.numel() else 0.0
    within = bool((error <= tol.atol + tol.rtol * r.abs()).all())
    cosine = _cosine(a, r)
    reasons = []
    if not within:
        reasons.append(
            f"max abs error {max_abs:.3g} exceeds atol {tol.atol:g} + rtol {tol.rtol:g}·|reference|"
        )
    if cosine < tol.min_cosine_similarity:
        reasons.append(f"cosine similarity {cosine:.6f} < {tol.min_cosine_similarity:g}")
    check = OutputCheck(
        name=name,
        max_abs_error=_finite(max_abs),
        max_rel_error=_finite(max_rel),
        cosine_similarity=cosine,
        passed=not reasons,
    )
    return check, f"{name}: {'; '.join(reasons)}" if reasons else ""


def _cosine(a: torch.Tensor, r: torch.Tensor) -> float:
    norm_a, norm_r = float(a.norm()), float(r.norm())
    if norm_a == 0.0 and norm_r == 0.0:
        return 1.0
    if norm_a == 0.0 or norm_r == 0.0:
        return 0.0
    value = float((a @ r) / (norm_a * norm_r))
    return max(-1.0, min(1.0, value)) if math.isfinite(value) else -1.0


def verify(actual: Sequence[torch.Tensor], reference: Sequence[torch.Tensor], tol: Tolerances) -> Report:
    """Every output against its reference; the worst numbers go into the Verification."""
    if not reference:
        check, why = _failed("outputs", "the reference program returned no tensors")
        return Report(_summary([check]), why)
    if len(actual) != len(reference):
        check, why = _failed(
            "outputs", f"the engine returned {len(actual)} tensors, the reference {len(reference)}"
        )
        return Report(_summary([check]), why)
    results = [
        compare(f"output_{i}", a, r, tol) for i, (a, r) in enumerate(zip(actual, reference, strict=True))
    ]
    checks = [check for check, _ in results]
    reasons = [why for _, why in results if why]
    summary = _summary(checks)
    if reasons:
        return Report(summary, "verification failed: " + "; ".join(reasons))
    return Report(
        summary,
        f"verified {len(checks)} output(s): max abs error {summary.max_abs_error:.3g}, "
        f"min cosine similarity {summary.min_cosine_similarity:.6f}",
    )


def _summary(checks: list[OutputCheck]) -> Verification:
    return Verification(
        passed=all(c.passed for c in checks),
        max_abs_error=max(c.max_abs_error for c in checks),
        max_rel_error=max(c.max_rel_error for c in checks),
        min_cosine_similarity=min(c.cosine_similarity for c in checks),
        outputs=checks,
    )
