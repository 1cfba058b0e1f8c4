"""Custom tasks from a spec file (YAML or JSON), so a probe needs no Python.

name: capitals
data: capitals.jsonl          # JSON Lines; relative paths resolve against the spec file
prompt: "What is the capital of {country}?"
answer: capital               # field holding the gold: a string or a list of strings
metrics: [contains, exact_match]
# optional: answer_type (text | yes_no | number), max_new_tokens, version, description
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import yaml

from imsm.errors import IMSMError
from imsm.metrics import ANSWER_TYPES, METRICS
from imsm.registry import unknown_name_message
from imsm.tasks.base import Task

REQUIRED = ("name", "data", "prompt", "answer", "metrics")
OPTIONAL = ("answer_type", "max_new_tokens", "version", "description")


def is_spec_path(name: str) -> bool:
    return name.endswith((".yaml", ".yml", ".json"))


def _read_spec(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise IMSMError(f"task spec {str(path)!r} does not exist; pass the path of a YAML or JSON spec file")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            spec = json.loads(text)
        else:
            spec = yaml.safe_load(text)
    except (json.JSONDecodeError, ValueError) as error:
        raise IMSMError(f"task spec {str(path)!r} cannot be parsed: {str(error).splitlines()[0]}") from None
    if not isinstance(spec, dict):
        raise IMSMError(f"task spec {str(path)!r} must be a mapping with keys {', '.join(REQUIRED)}")
    return spec


def load_spec(path: str | Path) -> Task:
    """A `Task` from a spec file, every field checked before any data or model is read."""
    path = Path(path).expanduser()
    spec = _read_spec(path)
    where = f"task spec {str(path)!r}"
    missing = [key for key in REQUIRED if key not in spec]
    if missing:
        raise IMSMError(f"{where} is missing {', '.join(missing)}; a spec needs {', '.join(REQUIRED)}")
    unknown = sorted(set(spec) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise IMSMError(f"{where} has unknown key(s) {unknown}; known keys: {', '.join(REQUIRED + OPTIONAL)}")
    prompt, answer_field = spec["prompt"], spec["answer"]
    if not isinstance(prompt, str) or not isinstance(answer_field, str):
        raise IMSMError(f"{where}: 'prompt' must be a template string and 'answer' a field name")
    try:
        placeholders = tuple(f for _, f, _, _ in string.Formatter().parse(prompt) if f)
    except ValueError as error:
        raise IMSMError(f"{where}: prompt template is malformed ({error}); write fields as {{field}}") from None
    metrics = spec["metrics"]
    if isinstance(metrics, str):
        metrics = [metrics]
    if not metrics:
        raise IMSMError(f"{where}: 'metrics' is empty; name at least one of {', '.join(METRICS.names())}")
    answer_type = spec.get("answer_type", "text")
    if answer_type not in ANSWER_TYPES:
        raise IMSMError(f"{where}: {unknown_name_message('answer_type', str(answer_type), list(ANSWER_TYPES))}")
    for metric in metrics:
        if metric not in METRICS:
            raise IMSMError(f"{where}: {unknown_name_message('metric', str(metric), METRICS.names())}")
        entry = METRICS.get(metric)
        if not entry.applies_to(answer_type):  # e.g. f1 and mcc count yes/no answers only
            supported = " or ".join(entry.answer_types or ())
            fitting = [name for name in METRICS.names() if METRICS.get(name).applies_to(answer_type)]
            raise IMSMError(
                f"{where}: metric {metric!r} is defined for answer_type {supported} only, not {answer_type!r}; "
                f"set answer_type: {supported}, or use one of {', '.join(fitting)}"
            )
    max_new_tokens = spec.get("max_new_tokens", 32)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise IMSMError(f"{where}: max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    data = (path.parent / str(spec["data"])).resolve()

    def golds(record):
        value = record[answer_field]
        return [str(v) for v in value] if isinstance(value, list) else [str(value)]

    return Task(
        name=str(spec["name"]),
        version=str(spec.get("version", "1")),
        directory=str(data.parent),
        splits={"test": (data.name,)},
        eval_split="test",
        train_split="test",  # a spec has one data file; it serves training too
        prompt=lambda record: prompt.format_map(record),
        golds=golds,
        target=lambda record: golds(record)[0],
        required_fields=tuple(dict.fromkeys((*placeholders, answer_field))),
        answer_type=answer_type,
        metrics=tuple(metrics),
        max_new_tokens=max_new_tokens,
        description=str(spec.get("description", f"custom task from {path.name}")),
        source=str(path),
    )
