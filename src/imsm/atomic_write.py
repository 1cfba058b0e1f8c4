"""Files and directories that appear whole or not at all, so a crash never leaves half of one.

Everything is written under a temporary name in the target's own directory (the rename then stays
on one filesystem, where it is atomic), flushed to disk with fsync, and renamed over the target
with `os.replace`. If the writing fails, the temporary is removed and whatever was at the target
is left as it was. When the disk refuses the write (full, over quota, over the file-size limit,
read-only, failing), the error is one line naming the file and the fix (`DiskRefusedWrite`).
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from safetensors import SafetensorError

from imsm.errors import IMSMError

# The disk refusing a write, and what the user can do about it.
_REFUSALS = {
    errno.ENOSPC: "free some disk space and run again",
    errno.EDQUOT: "free some space within your disk quota and run again",
    errno.EFBIG: "the file is over this system's file-size limit (ulimit -f, or the filesystem's); "
    "raise it or write to another disk",
    errno.EROFS: "the disk is read-only; write to another one",
    errno.EIO: "the disk reported an I/O error; check it, or write to another one",
}


class DiskRefusedWrite(IMSMError):
    """The disk refused a write: full, over quota or a size limit, read-only, or failing."""


def disk_refusal(error: BaseException) -> tuple[str, str] | None:
    """(the system's reason, the fix) when `error` is the disk refusing a write, else None.

    safetensors reports its writes' I/O errors as its own exception, "... (os error 28)".
    """
    if isinstance(error, OSError):
        code = error.errno
    elif isinstance(error, SafetensorError) and (found := re.search(r"\(os error (\d+)\)", str(error))):
        code = int(found.group(1))
    else:
        return None
    return (os.strerror(code), _REFUSALS[code]) if code in _REFUSALS else None


def _refused(path: Path, error: BaseException) -> DiskRefusedWrite | None:
    refusal = disk_refusal(error)
    if refusal is None:
        return None
    reason, fix = refusal
    return DiskRefusedWrite(f"could not write {path} ({reason}); {fix}. What was there before is unchanged")


def _fsync(path: Path) -> None:
    # Directories too: a rename or a new entry is on disk once its directory is synced.
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_tree(directory: Path) -> None:
    for root, _, files in os.walk(directory):
        for name in files:
            _fsync(Path(root) / name)
        _fsync(Path(root))


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; it is put back at once
    os.umask(mask)
    return mask


def _new_mode(is_directory: bool, mask: int) -> int:
    """What the umask `mask` gives a newly created file or directory."""
    return (0o777 if is_directory else 0o666) & ~mask


def _usual_mode(path: Path, target: Path) -> None:
    """Give `path` (a staged file or directory) the permissions the user would expect of `target`:
    those of the `target` it replaces, else what the umask gives a new one. Writers that stage
    privately create theirs owner-only (safetensors' files 0600, `mkdtemp`'s directories 0700),
    which would hide a saved adapter from the other users of a shared machine."""
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        mode = _new_mode(path.is_dir(), _umask())
    os.chmod(path, mode)


def _usual_modes_in(directory: Path) -> None:
    """`_usual_mode` for everything inside a staged directory that has no counterpart to copy: the
    umask's files and directories."""
    mask = _umask()
    for root, directories, files in os.walk(directory):
        for name in directories:
            os.chmod(Path(root) / name, _new_mode(True, mask))
        for name in files:
            os.chmod(Path(root) / name, _new_mode(False, mask))


def _temporary_beside(path: Path) -> Path:
    # Hidden, unique per call (two threads or processes may write the same target).
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")


def _write_data(path: Path, data: str | bytes) -> None:
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")


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
    temporary = _temporary_beside(path)
    try:
        yield temporary
        _usual_mode(temporary, path)
        _fsync(temporary)
        os.replace(temporary, path)
        _fsync(path.parent)
    except (OSError, SafetensorError) as error:
        if (refused := _refused(path, error)) is None:
            raise
        raise refused from None
    finally:
        temporary.unlink(missing_ok=True)  # only left after a failure: the rename consumed it


def write_atomically(path: str | os.PathLike, data: str | bytes) -> None:
    """Write `data` (text as UTF-8, or bytes) to `path`, so readers never see half a file."""
    with atomic_path(path) as temporary:
        _write_data(temporary, data)


def write_together(files: Mapping[str | os.PathLike, str | bytes]) -> None:
    """Write files that belong together (per-example rows and the results that summarise them) so
    that a failure leaves every one as it was: all are written and synced under temporary names
    before the first is renamed, then renamed in the order given (the file whose presence marks
    the whole as done goes last). A rename needs no space, so a full disk never splits the set."""
    staged: list[tuple[Path, Path]] = []
    path = None
    try:
        for target, data in files.items():
            path = Path(target)
            staged.append((_temporary_beside(path), path))
            _write_data(staged[-1][0], data)
            _fsync(staged[-1][0])
        for temporary, path in staged:
            os.replace(temporary, path)
        for directory in dict.fromkeys(target.parent for _, target in staged):
            _fsync(directory)
    except OSError as error:
        if path is None or (refused := _refused(path, error)) is None:
            raise
        raise refused from None
    finally:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)  # only left after a failure: the renames consumed them


@contextmanager
def staged_directory(
    target: str | os.PathLike, *, if_exists: Literal["replace", "keep", "merge"] = "replace"
) -> Iterator[Path]:
    """An empty directory beside `target` to fill; when the block succeeds it becomes `target`.

    Args:
        target: the directory to create (its parent is created if needed).
        if_exists: what to do with a `target` that is already there.
            "replace": move it aside, rename the staged directory into place, then delete the
            old one (a checkpoint written again).
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
    replaced = staging.with_name(staging.name.replace(".staging-", ".replaced-"))
    try:
        yield staging
        _usual_modes_in(staging)
        _usual_mode(staging, target)
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
            # Moved aside rather than deleted first: the target is missing for one rename only.
            if target.exists():
                os.replace(target, replaced)
            os.replace(staging, target)
        for directory in (target, target.parent):  # the renames into and of `target`
            _fsync(directory)
    except (OSError, SafetensorError) as error:
        if (refused := _refused(target, error)) is None:
            raise
        raise refused from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(replaced, ignore_errors=True)
