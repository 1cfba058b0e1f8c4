"""Reading task data: a local data directory laid out like `shared/data`, or the hub.

The directory comes from `--data-dir` or `IMSM_DATA_DIR`; each task reads
`<data dir>/<task directory>/<split file>.jsonl`. Without one, users who are online get the
same data through `datasets`. Every record is checked for the fields the task needs, and
problems are reported with file and line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from imsm.errors import IMSMError
from imsm.registry import unknown_name_message
from imsm.tasks.base import SLICE, Record, Task

DATA_DIR_VARIABLE = "IMSM_DATA_DIR"
# Text never holds NUL bytes; a crash can leave a file's blocks zero-filled.
ZERO_FILLED = "NUL bytes (a zero-filled or binary file, not text); restore the file"


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """`--data-dir`, else $IMSM_DATA_DIR, else None (use the hub)."""
    chosen = data_dir or os.environ.get(DATA_DIR_VARIABLE)
    if not chosen:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise IMSMError(f"data directory {str(path)!r} does not exist; pass --data-dir DIR or set {DATA_DIR_VARIABLE}")
    return path


def read_jsonl(path: Path) -> list[Record]:
    """Records of a JSON Lines file; a bad line is reported with its number."""
    records = []
    with path.open("rb") as handle:  # bytes: a line that is not UTF-8 is reported with its number
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise IMSMError(f"{path}:{number}: not UTF-8 text (byte {error.start}); save it as UTF-8") from None
            if not line.strip():
                continue
            if "\0" in line:
                raise IMSMError(f"{path}:{number}: {ZERO_FILLED}")
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise IMSMError(f"{path}:{number}: malformed JSON ({error.msg}); fix or remove that line") from None
            if not isinstance(record, dict):
                raise IMSMError(f"{path}:{number}: expected a JSON object per line, got {type(record).__name__}")
            record["_source"] = f"{path}:{number}"
            records.append(record)
    return records


def read_text_documents(path: Path) -> list[Record]:
    """Documents of a plain-text file, separated by blank lines, as records {"text": ...}.

    Each document keeps its line breaks; its source is the file and its first line.
    """
    records: list[Record] = []
    lines: list[str] = []
    first = 0
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise IMSMError(f"{path}: not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    if "\0" in text:
        number = text.count("\n", 0, text.index("\0")) + 1
        raise IMSMError(f"{path}:{number}: {ZERO_FILLED}")
    for number, line in enumerate([*text.split("\n"), ""], start=1):  # "" ends the last document
        if line.strip():
            first = first or number
            lines.append(line.rstrip("\r"))
        elif lines:
            records.append({"text": "\n".join(lines), "_source": f"{path}:{first}"})
            lines, first = [], 0
    return records


def _split_files(task: Task, split: str | None) -> tuple[str, tuple[str, ...]]:
    split = split or task.eval_split
    if split not in task.splits:
        raise IMSMError(f"task {task.name}: {unknown_name_message('split', split, list(task.splits))}")
    return split, task.splits[split]


def _from_directory(task: Task, split: str, files: tuple[str, ...], data_dir: Path | None) -> list[Record]:
    # Custom tasks carry an absolute directory; built-in ones are relative to the data directory.
    base = Path(task.directory) if Path(task.directory).is_absolute() else data_dir / task.directory
    records: list[Record] = []
    for name in files:
        path = base / name
        if not path.is_file():
            raise IMSMError(
                f"task {task.name} ({split}): data file {str(path)!r} is missing; point --data-dir at a directory "
                f"laid out like shared/data (with {task.directory}/{name})"
            )
        records.extend(read_text_documents(path) if path.suffix == ".txt" else read_jsonl(path))
    return records


def _from_hub(task: Task, split: str) -> list[Record]:
    hint = f"pass --data-dir (a directory laid out like shared/data) or set {DATA_DIR_VARIABLE}"
    if task.hub is None or split not in task.hub.splits:
        raise IMSMError(f"task {task.name} ({split}) has no data directory to read and no hub copy; {hint}")
    try:
        import datasets  # optional (not a dependency): needed only for this online fallback
    except ImportError:
        raise IMSMError(
            f"task {task.name}: no data directory given and `datasets` is not installed "
            f"(pip install 'imsm[hub]'); {hint}"
        ) from None
    try:
        rows = datasets.load_dataset(task.hub.path, task.hub.name, split=task.hub.splits[split])
    except Exception as error:  # network, missing dataset: all mean the same to the user
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise IMSMError(
            f"task {task.name}: could not load {task.hub.path} from the hub ({first_line}); {hint}"
        ) from None
    return [{**task.hub.convert(dict(row)), "_source": f"hub:{task.hub.path}[{i}]"} for i, row in enumerate(rows)]


def load_examples(
    task: Task, split: str | None = None, data_dir: Path | None = None, limit: int | None = None
) -> list[Record]:
    """The records of one split: the first `limit` of them, in file order (deterministic); for a
    slice `NAME@START` (`Task.first`), the first `limit` from the START-th (0-based) on.

    Raises:
        IMSMError: missing file, malformed line, a record without a needed field, no records.
    """
    if limit is not None and limit < 1:
        raise IMSMError(f"--limit must be at least 1, got {limit}")
    split, files = _split_files(task, split)
    if data_dir is not None or Path(task.directory).is_absolute():
        records = _from_directory(task, split, files, data_dir)
    else:
        records = _from_hub(task, split)
    available = len(records)
    if task.first is not None:
        records = records[task.first :]
    if limit is not None:
        records = records[:limit]
    if not records and task.first and available:
        whole = task.name.rpartition(SLICE)[0]
        raise IMSMError(
            f"task {task.name} ({split}) has no examples: {whole} has {available} questions; start below that"
        )
    if not records:
        raise IMSMError(f"task {task.name} ({split}) has no examples; check the data file")
    for record in records:
        missing = [name for name in task.required_fields if name not in record]
        if missing:
            raise IMSMError(
                f"{record['_source']}: record has no field {missing[0]!r}, which task {task.name} needs "
                f"(needed: {', '.join(task.required_fields)})"
            )
        if task.document is not None:
            task.document(record)  # a drift task's reader checks the record's text (IMSMError, with its source)
        if task.gold_index is not None:
            task.gold_index(record)  # a multiple-choice task checks the options and the gold (same)
    return records
