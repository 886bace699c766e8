"""Progress of long loops: a tqdm bar on a terminal, and in a log file (cluster jobs) a line at intervals
with the count, the rate and the time left, so that a stuck job and a slow one look different."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Sized
from typing import IO, TypeVar

from tqdm import tqdm

T = TypeVar("T")
LOG_INTERVAL_S = 30.0      # at most one line per interval in logs (plus the first and the last item)


def progress(items: Iterable[T], what: str, unit: str = "src", stream: IO[str] | None = None,
             interval_s: float = LOG_INTERVAL_S) -> Iterator[T]:
    """Iterate ``items`` reporting progress to ``stream`` (default stderr): a bar when it is a terminal,
    else lines ``<what>: 3/40 src, 0.52 src/s, 71 s left``."""
    out = sys.stderr if stream is None else stream
    if getattr(out, "isatty", lambda: False)():
        yield from tqdm(items, desc=what, unit=unit, leave=False, file=out)
        return
    total = len(items) if isinstance(items, Sized) else None
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if done == 1 or done == total or now - last >= interval_s:
            last = now
            rate = done / max(now - start, 1e-9)
            of = f"/{total}" if total is not None else ""
            left = f", {(total - done) / rate:.0f} s left" if total is not None and done < total else ""
            out.write(f"{what}: {done}{of} {unit}, {rate:.3g} {unit}/s{left}\n")
            out.flush()
