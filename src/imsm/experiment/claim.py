"""Claims on grid cells, so that several `imsm experiment` processes can share one grid.

A worker claims a cell by taking an exclusive, non-blocking `flock` on the cell's lock file and holds
it while it trains and evaluates the cell. The lock files live apart from the run directories,
which training may clear. The kernel drops the lock when the process ends, however
it ends (finished, killed, session over), so there are no stale claims to clean up and no race
between two workers taking over one. Where `fcntl` does not exist (Windows) every claim succeeds:
one worker per grid there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux or macOS
    fcntl = None


@contextmanager
def claimed(lock_file: Path) -> Iterator[bool]:
    """`with claimed(path) as mine:` yields whether this process got the claim; held until the
    block ends. The file is created if needed and never removed (removing it would let a third
    worker lock a fresh file while the second still holds the old one)."""
    if fcntl is None:
        yield True
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(lock_file, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)
