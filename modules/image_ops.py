"""Modules that work on pixels and boxes without a learned model."""

from __future__ import annotations

from visprog.registry import module
from visprog.types import Objects


@module(aliases=["COUNT"])
def Count(box: Objects) -> int:
    """Count the objects.

    Args:
        box: the objects to count.
    """
    return len(box)
