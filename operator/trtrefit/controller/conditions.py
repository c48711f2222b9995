"""metav1.Condition helpers and the reasons the operator uses, kept beside each other."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from trtrefit.api.status import Condition, ConditionStatus, ConditionType

T, F, U = ConditionStatus.TRUE, ConditionStatus.FALSE, ConditionStatus.UNKNOWN

# Reasons besides the Step names (which double as reasons).
REFIT_PENDING = "RefitPending"
WAITING_FOR_REFIT = "WaitingForRefit"
NOT_VERIFIED = "NotVerified"
VERIFICATION_PASSED = "VerificationPassed"
SERVED = "Served"
ROLLOUT_COMPLETE = "RolloutComplete"
ROLLOUT_PENDING = "RolloutPending"
NOT_STALLED = "NotStalled"
PAUSED = "Paused"
INVALID_SPEC = "InvalidSpec"

ORDER = (
    ConditionType.READY,
    ConditionType.RECONCILING,
    ConditionType.STALLED,
    ConditionType.VERIFIED,
    ConditionType.ROLLED_OUT,
)


@dataclass(frozen=True)
class Observation:
    """A condition before it gets its generation and transition time."""

    type: ConditionType
    status: ConditionStatus
    reason: str
    message: str = ""


def merge_conditions(
    previous: Sequence[Condition], observations: Sequence[Observation], generation: int, now: datetime
) -> list[Condition]:
    """New conditions in a stable order; lastTransitionTime is kept when a condition's status is unchanged."""
    before = {c.type: c for c in previous}
    merged = []
    for seen in sorted(observations, key=lambda o: ORDER.index(o.type)):
        old = before.get(seen.type)
        changed = old is None or old.status != seen.status
        merged.append(
            Condition(
                type=seen.type.value,
                status=seen.status,
                reason=seen.reason,
                message=seen.message,
                observed_generation=generation,
                last_transition_time=now if changed or old is None else old.last_transition_time,
            )
        )
    return merged
