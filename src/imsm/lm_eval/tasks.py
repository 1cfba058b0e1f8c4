"""lm-eval task configs for the five knowledge benchmarks, reading this project's local JSON files.

The YAMLs in `imsm/lm_eval/task_configs/` are lm-eval 0.4.13's own `arc_easy`, `arc_challenge`, `piqa`,
`sciq` and `winogrande` configs (same prompts, choices, targets and metrics) under the names
`imsm_*`, with `dataset_path: json` and `data_files` under the data directory. lm-eval reads no
environment variables in a YAML, so `write_task_configs` writes a copy with the data directory
filled in, for lm-eval's `--include_path` (`python -m imsm.lm_eval --data-dir DIR` does it).

WinoGrande's prompt is three functions in lm-eval; they are re-implemented here, and the YAML
names them (`!function imsm.lm_eval.tasks.winogrande_...`).
"""

from __future__ import annotations

import json
from pathlib import Path

from imsm.errors import IMSMError

# The YAMLs are package data, beside this module (pyproject.toml's package-data).
TASK_CONFIG_DIR = Path(__file__).resolve().parent / "task_configs"
DATA_DIR_PLACEHOLDER = "${IMSM_DATA_DIR}"
TASK_PREFIX = "imsm_"


def write_task_configs(data_dir: str | Path, directory: str | Path, source: str | Path = TASK_CONFIG_DIR) -> Path:
    """Copy the task YAMLs of `source` into `directory` with `${IMSM_DATA_DIR}` made `data_dir`.

    Returns:
        `directory`, to pass to lm-eval as `--include_path` (or `TaskManager(include_path=...)`).
    """
    source, data_dir = Path(source), Path(data_dir).expanduser().resolve()
    configs = sorted(source.glob("*.yaml"))
    if not configs:
        raise IMSMError(f"no lm-eval task YAMLs in {source}; they ship with imsm in imsm/lm_eval/task_configs")
    if not data_dir.is_dir():
        raise IMSMError(f"data directory {str(data_dir)!r} does not exist; pass --data-dir DIR or set IMSM_DATA_DIR")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # The placeholder sits inside a double-quoted YAML string; a JSON string body is a valid one.
    quoted = json.dumps(str(data_dir))[1:-1]
    for config in configs:
        (directory / config.name).write_text(config.read_text().replace(DATA_DIR_PLACEHOLDER, quoted))
    return directory


# ------------------------------------------------------------------------------------------------
# WinoGrande, "partial evaluation" (Trinh & Le 2018), as lm-eval 0.4.13 scores it: each option
# fills the blank and everything before it forms one context per option; the rest of the
# sentence is the continuation, the same for both, and the context that makes it likelier wins.


def winogrande_gold(record: dict) -> int:
    """doc_to_text: the gold option's index (the record's `answer` is the string "1" or "2")."""
    return int(record["answer"]) - 1


def winogrande_continuation(record: dict) -> str:
    """doc_to_target: the sentence after the blank, stripped."""
    sentence = record["sentence"]
    return sentence[sentence.index("_") + 1 :].strip()


def winogrande_contexts(record: dict) -> list[str]:
    """doc_to_choice: the sentence up to the blank, with each option in it."""
    sentence = record["sentence"]
    before = sentence[: sentence.index("_")]
    return [before + record["option1"], before + record["option2"]]
