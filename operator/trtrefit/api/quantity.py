"""Byte sizes written as Kubernetes quantities (`20Gi`, `500M`, `1073741824`), for the refit Job's
download cap and scratch volume."""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
}
BYTE_SIZE_PATTERN = r"^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$"


def byte_size(text: str) -> int | None:
    """The number of bytes, or None when `text` is not a positive whole quantity of bytes."""
    match = re.fullmatch(r"\s*([0-9]+)\s*(Ki|Mi|Gi|Ti|k|M|G|T)?\s*", text)
    if match is None or int(match.group(1)) <= 0:
        return None
    return int(match.group(1)) * _UNITS[match.group(2) or ""]


def quantity(size: int) -> str:
    """Bytes as the shortest exact binary quantity (`32Gi`), as a human would write it."""
    for unit in ("Ti", "Gi", "Mi", "Ki"):
        if size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return str(size)
