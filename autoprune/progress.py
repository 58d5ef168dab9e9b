"""Progress for long loops: a bar on a terminal, periodic log lines elsewhere."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")

log = logging.getLogger("autoprune")


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """Yield ``items``, showing a bar on a terminal or logging count and rate every 10%."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if sys.stderr.isatty():
        yield from tqdm(items, desc=desc, total=total, leave=False)
        return
    start = time.perf_counter()
    step = max(1, (total or 100) // 10)  # every 10% of a known total, else every 10 items
    count = 0
    for count, item in enumerate(items, start=1):
        yield item
        if count % step == 0 or count == total:
            elapsed = time.perf_counter() - start
            of_total = f"/{total}" if total else ""
            log.info("%s: %d%s (%.1f/s)", desc, count, of_total, count / max(elapsed, 1e-9))
