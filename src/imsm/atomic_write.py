"""Files and directories that appear whole or not at all, so a crash never leaves half of one.

Everything is written under a temporary name in the target's own directory (the rename then stays
on one filesystem, where it is atomic), flushed to disk with fsync, and renamed over the target
with `os.replace`. If the writing fails, the temporary is removed and whatever was at the target
is left as it was.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_tree(directory: Path) -> None:
    for root, _, files in os.walk(directory):
        for name in files:
            _fsync(Path(root) / name)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` to write to, renamed over `path` when the block succeeds.

    For files that another library writes (safetensors' `save_file`, matplotlib's `savefig`). The
    temporary ends in `path`'s suffix, since some writers pick the format from it.

    Args:
        path: the file to create or replace.

    Yields:
        The temporary path (not yet created); the block must write the whole file there.
    """
    path = Path(path)
    # Hidden, unique per call (two threads or processes may write the same target).
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        yield temporary
        _fsync(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)  # only left after a failure: the rename consumed it


def write_atomically(path: str | os.PathLike, data: str | bytes) -> None:
    """Write `data` (text as UTF-8, or bytes) to `path`, so readers never see half a file."""
    with atomic_path(path) as temporary:
        if isinstance(data, bytes):
            temporary.write_bytes(data)
        else:
            temporary.write_text(data, encoding="utf-8")


@contextmanager
def staged_directory(
    target: str | os.PathLike, *, if_exists: Literal["replace", "keep", "merge"] = "replace"
) -> Iterator[Path]:
    """An empty directory beside `target` to fill; when the block succeeds it becomes `target`.

    Args:
        target: the directory to create (its parent is created if needed).
        if_exists: what to do with a `target` that is already there.
            "replace": remove it, then rename the staged directory into place (a checkpoint
            written again).
            "keep": a non-empty `target` wins and the staged copy is dropped (a cache that
            several processes may fill at once: the first complete copy stays, and anyone
            reading it is not disturbed).
            "merge": rename each staged entry into `target`, replacing entries of the same
            name and keeping the others (an adapter saved into a run directory that also holds
            checkpoints). Each entry lands whole; a crash part-way may leave some entries new
            and some old.

    Yields:
        The staging directory. It is removed, whatever happens, once the block ends.
    """
    if if_exists not in ("replace", "keep", "merge"):
        raise ValueError(f"if_exists must be 'replace', 'keep' or 'merge', got {if_exists!r}")
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    try:
        yield staging
        _fsync_tree(staging)
        if if_exists == "merge":
            target.mkdir(exist_ok=True)
            for item in staging.iterdir():
                destination = target / item.name
                if item.is_dir() and destination.is_dir():  # os.replace cannot replace a full directory
                    shutil.rmtree(destination)
                os.replace(item, destination)
        elif if_exists == "keep":
            try:
                os.replace(staging, target)  # succeeds onto a missing or empty directory only
            except OSError:
                if not (target.is_dir() and any(target.iterdir())):
                    raise
        else:
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
