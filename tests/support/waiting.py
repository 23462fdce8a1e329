"""The one way tests wait for something: poll a condition, bounded by a timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(condition: Callable[[], object], timeout_s: float, every_s: float = 0.05) -> bool:
    """Poll ``condition`` every ``every_s`` until it holds or ``timeout_s`` passed; whether it held."""
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / every_s) + 2):
        if condition():
            return True
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(every_s)
    return bool(condition())


def until_blocking(condition: Callable[[], object], timeout_s: float, every_s: float = 0.05) -> bool:
    """:func:`until` for synchronous tests (process tests that have no event loop)."""
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / every_s) + 2):
        if condition():
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(every_s)
    return bool(condition())
