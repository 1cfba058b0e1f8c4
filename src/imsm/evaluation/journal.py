"""A journal of finished evaluation batches, so an interrupted `imsm eval` resumes where it stopped.

Full evaluation splits take hours on a CPU (FreebaseQA: 3996 generations and as many likelihood
passes). Each finished batch appends one JSON line per example to a journal beside the output;
a rerun with the same model, adapter, task and settings reads it back and evaluates only the
examples it lacks. Greedy answers do not depend on how examples are batched, so the resumed run
gives the same results as an uninterrupted one. Each line is one whole example (its answer and
its scores), so an example is either done or not. The first line holds a fingerprint of
everything that shapes the results; a journal with another fingerprint is stale and is started
afresh.

A journal is only a cache of work that can be redone, so a damaged one is never refused: one whose
header cannot be read (cut short, zero-filled, not a journal) is started afresh, and damaged rows
are evaluated again, each with a one-line note on stderr. Only the last line, which a kill can cut
short, is dropped without a note.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imsm.tasks.base import Task


def journal_settings(
    run_settings: dict[str, Any] | None, task: Task, split: str, journal_format: int, **details: Any
) -> dict[str, Any]:
    """What shapes one task's results, for its journal's fingerprint: the run's settings (model,
    adapter, ...), the task and split, the journal's own format and the evaluator's `details`."""
    return {
        **(run_settings or {}),
        "task": task.name,
        "task_version": task.version,
        "split": split,
        "journal_format": journal_format,
        **details,
    }


def fingerprint(settings: dict[str, Any], texts: Sequence[str] = ()) -> str:
    """A short digest of JSON-able `settings` and of every text (prompts, targets) evaluated."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for text in texts:
        digest.update(b"\0" + text.encode())
    return digest.hexdigest()[:32]


def directory_digest(directory: Path) -> str | None:
    """Digest of an adapter directory's weights and configs (top level only), None if it has none."""
    digest, found = hashlib.sha256(), False
    for path in sorted(Path(directory).glob("*")):
        if path.is_file() and path.suffix in (".safetensors", ".json"):
            found = True
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:32] if found else None


def _json_line(line: bytes) -> Any:
    """One journal line's JSON value, or None if it is not a whole line of JSON."""
    try:
        return json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


class EvalJournal:
    """Appends finished examples, one JSON object per line; reads them back on resume.

    Lines after the header are `{"i": index, **row}`. A line that lacks any of `fields` (half a
    row, or a line cut short by a kill) is ignored, so an example is either whole or not done.
    """

    def __init__(self, path: Path, run_fingerprint: str, fields: Sequence[str]):
        self.path = Path(path)
        self.fingerprint = run_fingerprint
        self.fields = tuple(fields)
        self.rows: dict[int, dict[str, Any]] = {}
        self._matches = self._read()  # whether the file on disk is this run's journal
        self._file = None

    def _read(self) -> bool:
        if not self.path.is_file():
            return False
        lines = [_json_line(line) for line in self.path.read_bytes().splitlines()]
        header = lines[0] if lines else None
        if not isinstance(header, dict) or "fingerprint" not in header:
            print(
                f"imsm: the evaluation journal {self.path} is damaged (no readable header); starting afresh",
                file=sys.stderr,
            )
            return False
        if header["fingerprint"] != self.fingerprint:
            return False  # another run's journal: ignore it, `open` starts a new one
        damaged = 0
        for number, row in enumerate(lines[1:], start=2):
            if isinstance(row, dict) and isinstance(row.get("i"), int) and all(key in row for key in self.fields):
                self.rows[row.pop("i")] = row
            elif number < len(lines):  # not the last line, which a kill may have cut short
                damaged += 1
        if damaged:
            print(
                f"imsm: {damaged} damaged lines of the evaluation journal {self.path} are ignored; "
                "their examples are evaluated again",
                file=sys.stderr,
            )
        return True

    def open(self) -> None:
        """Start appending; a missing or stale journal is replaced by a fresh header."""
        if not self._matches:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"fingerprint": self.fingerprint}) + "\n", encoding="utf-8")
            self._matches = True
        self._file = self.path.open("a", encoding="utf-8")
        with self.path.open("rb") as existing:
            existing.seek(-1, os.SEEK_END)
            if existing.read(1) != b"\n":
                self._file.write("\n")  # end a line a kill cut short, so the next one stays whole

    def add(self, indices: Sequence[int], rows: Sequence[dict[str, Any]]) -> None:
        """Journal whole examples (each row holding every one of `fields`), flushed to disk."""
        if self._file is None:
            self.open()
        pairs = list(zip(indices, rows, strict=True))
        for index, row in pairs:
            self.rows[index] = dict(row)
        lines = [json.dumps({"i": index, **row}, ensure_ascii=False) + "\n" for index, row in pairs]
        try:
            self._file.write("".join(lines))
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as error:  # a full disk: the command line's one line names the file
            error.filename = error.filename or str(self.path)
            raise

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
