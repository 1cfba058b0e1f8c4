"""A journal of finished evaluation batches, so an interrupted `imsm eval` resumes where it stopped.

Full evaluation splits take hours on a CPU (FreebaseQA: 3996 generations and as many likelihood
passes). Each finished batch appends one JSON line per example to a journal beside the output;
a rerun with the same model, adapter, task and settings reads it back and evaluates only the
examples it lacks. Greedy answers do not depend on how examples are batched, so the resumed run
gives the same results as an uninterrupted one. The first line holds a fingerprint of everything
that shapes the results; a journal with another fingerprint is stale and is started afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


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


class EvalJournal:
    """Appends generated answers and likelihood scores per example; reads them back on resume.

    Lines after the header are {"i": index, "prediction": text} or {"i": index, "nll": ...,
    "margin": ..., "frozen_weight": ...}. A line cut short by a kill is ignored.
    """

    def __init__(self, path: Path, run_fingerprint: str):
        self.path = Path(path)
        self.fingerprint = run_fingerprint
        self.predictions: dict[int, str] = {}
        self.scores: dict[int, tuple[float, float | None, float | None]] = {}
        self._matches = self._read()  # whether the file on disk is this run's journal
        self._file = None

    def _read(self) -> bool:
        if not self.path.is_file():
            return False
        lines = self.path.read_text(encoding="utf-8").splitlines()
        try:
            header = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            header = {}
        if header.get("fingerprint") != self.fingerprint:
            return False  # another run's journal: ignore it, `open` starts a new one
        for line in lines[1:]:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # the last line of a killed run may be cut short
            if "prediction" in row:
                self.predictions[row["i"]] = row["prediction"]
            elif "nll" in row:
                nll = float("nan") if row["nll"] is None else row["nll"]
                self.scores[row["i"]] = (nll, row["margin"], row["frozen_weight"])
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

    def _append(self, rows: list[dict[str, Any]]) -> None:
        if self._file is None:
            self.open()
        self._file.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        self._file.flush()
        os.fsync(self._file.fileno())

    def add_predictions(self, indices: Sequence[int], texts: Sequence[str]) -> None:
        for index, text in zip(indices, texts, strict=True):
            self.predictions[index] = text
        self._append([{"i": i, "prediction": t} for i, t in zip(indices, texts, strict=True)])

    def add_scores(self, indices: Sequence[int], scores: Sequence[tuple[float, float | None, float | None]]) -> None:
        rows = []
        for index, (nll, margin, weight) in zip(indices, scores, strict=True):
            self.scores[index] = (nll, margin, weight)
            rows.append({"i": index, "nll": None if nll != nll else nll, "margin": margin, "frozen_weight": weight})
        self._append(rows)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def remove(self) -> None:
        """Drop the journal once its task's results are written for good."""
        self.close()
        self.path.unlink(missing_ok=True)
