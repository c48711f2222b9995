"""JSON merge patches (RFC 7386) between two JSON documents, for writing status in one minimal request."""

from __future__ import annotations

from typing import Any


def merge_patch(old: Any, new: Any) -> Any:
    """The merge patch that turns `old` into `new`: changed keys, null for removed ones; {} when equal.

    Lists and scalars are replaced whole, as RFC 7386 does."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            child = merge_patch(old[key], value)
            patch[key] = child
    return patch
