"""status.history: what served before, newest first, for rollback. Shared by both strategies."""

from __future__ import annotations

from datetime import datetime

from trtrefit.api.status import HISTORY_LIMIT, HistoryEntry, ServingStatus


def history_after(
    history: list[HistoryEntry], before: ServingStatus | None, after: ServingStatus | None, now: datetime
) -> list[HistoryEntry]:
    """The history once `after` replaced `before` (unchanged when nothing new serves)."""
    if before is None or after is None:
        return history
    if (before.engine, before.checkpoint) == (after.engine, after.checkpoint):
        return history
    left = HistoryEntry(engine=before.engine, checkpoint=before.checkpoint, since=before.since, until=now)
    return [left, *history][:HISTORY_LIMIT]
