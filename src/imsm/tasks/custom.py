"""Custom tasks from a spec file (YAML or JSON), so a probe needs no Python.

name: capitals
data: capitals.jsonl          # JSON Lines; relative paths resolve against the spec file
prompt: "What is the capital of {country}?"
answer: capital               # field holding the gold: a string or a list of strings
metrics: [contains, exact_match]
# optional: answer_type (text | yes_no | number), max_new_tokens, version, description

A multiple-choice probe, scored by each option's log-likelihood after the prompt (as
lm-evaluation-harness scores ARC; `answer_type: multiple_choice`, imsm.evaluation.choice):

name: capitals_mc
answer_type: multiple_choice
data: capitals_mc.jsonl
prompt: "Question: What is the capital of {country}?\nAnswer:"
choices: options              # field holding the list of option texts
answer: gold                  # field holding the gold option's 0-based index, or its text
metrics: [accuracy, accuracy_norm]  # optional; these two are the only ones
# optional: version, description, chance (the accuracy of guessing, e.g. 0.25 for four options)

Drift from the base model on a user's own documents (`answer_type: drift`, imsm.evaluation.drift):

name: my_docs
answer_type: drift
data: docs.jsonl              # JSON Lines with `text: FIELD` (and optionally `context: FIELD`),
text: body                    # or a .txt file: documents separated by blank lines
metrics: [drift_nll, drift_kl]  # optional; these two are the only ones
# optional: context, version, description
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
from imsm.tasks import choice
from imsm.tasks.base import Task
from imsm.yaml_file import load_yaml

REQUIRED = ("name", "data", "prompt", "answer", "metrics")
OPTIONAL = ("answer_type", "max_new_tokens", "version", "description")


def is_spec_path(name: str) -> bool:
    return name.endswith((".yaml", ".yml", ".json"))


def _read_spec(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise IMSMError(f"task spec {str(path)!r} does not exist; pass the path of a YAML or JSON spec file")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            spec = json.loads(text)
        else:
            spec = load_yaml(text)  # refuses NUL bytes, so a zero-filled file too
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as error:
        raise IMSMError(
            f"task spec {str(path)!r} cannot be parsed ({str(error).splitlines()[0]}); "
            "fix it, or restore it from where it came from"
        ) from None
    if not isinstance(spec, dict):
        raise IMSMError(f"task spec {str(path)!r} must be a mapping with keys {', '.join(REQUIRED)}")
    return spec


def _file_fields(spec: dict[str, Any], data: Path) -> dict[str, Any]:
    """What every spec's `Task` shares: its name and version, and its one data file as the test split."""
    return {
        "name": str(spec["name"]),
        "version": str(spec.get("version", "1")),
        "directory": str(data.parent),
        "splits": {"test": (data.name,)},
        "eval_split": "test",
    }


def _template_fields(prompt: str, where: str) -> tuple[str, ...]:
    """The record fields a prompt template names."""
    try:
        return tuple(f for _, f, _, _ in string.Formatter().parse(prompt) if f)
    except ValueError as error:
        raise IMSMError(f"{where}: prompt template is malformed ({error}); write fields as {{field}}") from None


def _check_metrics(metrics: list[Any], answer_type: str, where: str) -> None:
    """Every metric registered and defined for `answer_type` (f1 and mcc count yes/no answers only,
    accuracy_norm reads options' log-likelihoods only, ...)."""
    for metric in metrics:
        if metric not in METRICS:
            raise IMSMError(f"{where}: {unknown_name_message('metric', str(metric), METRICS.names())}")
        entry = METRICS.get(metric)
        if not entry.applies_to(answer_type):
            supported = " or ".join(entry.supported_types)
            fitting = [name for name in METRICS.names() if METRICS.get(name).applies_to(answer_type)]
            raise IMSMError(
                f"{where}: metric {metric!r} is defined for answer_type {supported} only, not {answer_type!r}; "
                f"set answer_type: {supported}, or use one of {', '.join(fitting)}"
            )


def load_spec(path: str | Path) -> Task:
    """A `Task` from a spec file, every field checked before any data or model is read."""
    path = Path(path).expanduser()
    spec = _read_spec(path)
    where = f"task spec {str(path)!r}"
    if spec.get("answer_type") == "drift":
        return _drift_task(path, spec, where)
    if spec.get("answer_type") == "multiple_choice":
        return _multiple_choice_task(path, spec, where)
    missing = [key for key in REQUIRED if key not in spec]
    if missing:
        raise IMSMError(f"{where} is missing {', '.join(missing)}; a spec needs {', '.join(REQUIRED)}")
    unknown = sorted(set(spec) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise IMSMError(f"{where} has unknown key(s) {unknown}; known keys: {', '.join(REQUIRED + OPTIONAL)}")
    prompt, answer_field = spec["prompt"], spec["answer"]
    if not isinstance(prompt, str) or not isinstance(answer_field, str):
        raise IMSMError(f"{where}: 'prompt' must be a template string and 'answer' a field name")
    placeholders = _template_fields(prompt, where)
    metrics = spec["metrics"]
    if isinstance(metrics, str):
        metrics = [metrics]
    if not metrics:
        raise IMSMError(f"{where}: 'metrics' is empty; name at least one of {', '.join(METRICS.names())}")
    answer_type = spec.get("answer_type", "text")
    if answer_type not in ANSWER_TYPES:
        raise IMSMError(f"{where}: {unknown_name_message('answer_type', str(answer_type), list(ANSWER_TYPES))}")
    _check_metrics(metrics, answer_type, where)
    max_new_tokens = spec.get("max_new_tokens", 32)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise IMSMError(f"{where}: max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    data = (path.parent / str(spec["data"])).resolve()

    def golds(record):
        value = record[answer_field]
        return [str(v) for v in value] if isinstance(value, list) else [str(value)]

    return Task(
        **_file_fields(spec, data),
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


DRIFT_REQUIRED = ("name", "data", "answer_type")
DRIFT_OPTIONAL = ("text", "context", "metrics", "version", "description")
DRIFT_METRICS = ("drift_nll", "drift_kl")


def _drift_task(path: Path, spec: dict[str, Any], where: str) -> Task:
    """A drift task (plain text scored against the base model) from its spec, checked whole.

    `data` is JSON Lines, whose `text` field (and optional `context` field) holds each document,
    or a `.txt` file of documents separated by blank lines (read by `imsm.data.read_text_documents`).
    """
    missing = [key for key in DRIFT_REQUIRED if key not in spec]
    if missing:
        raise IMSMError(f"{where} is missing {', '.join(missing)}; a drift spec needs {', '.join(DRIFT_REQUIRED)}")
    known = DRIFT_REQUIRED + DRIFT_OPTIONAL
    unknown = sorted(set(spec) - set(known))
    if unknown:
        raise IMSMError(f"{where} has unknown key(s) {unknown} for answer_type drift; known keys: {', '.join(known)}")
    data = (path.parent / str(spec["data"])).resolve()
    if data.suffix not in (".jsonl", ".txt"):
        raise IMSMError(f"{where}: data {str(spec['data'])!r} must be a .jsonl or .txt file for answer_type drift")
    if data.suffix == ".txt":
        fields = [key for key in ("text", "context") if key in spec]
        if fields:
            raise IMSMError(f"{where}: a .txt data file holds the documents themselves; remove {', '.join(fields)}")
        text_field, context_field = "text", None  # the reader puts each document under "text"
    else:
        text_field, context_field = spec.get("text"), spec.get("context")
        if not isinstance(text_field, str) or not text_field:
            raise IMSMError(f"{where}: a .jsonl drift spec needs 'text: FIELD', the field holding each document")
        if context_field is not None and (not isinstance(context_field, str) or not context_field):
            raise IMSMError(f"{where}: 'context' must be a field name, got {context_field!r}")
    metrics = spec.get("metrics", list(DRIFT_METRICS))
    metrics = [metrics] if isinstance(metrics, str) else metrics
    if not isinstance(metrics, list) or not metrics or any(m not in DRIFT_METRICS for m in metrics):
        raise IMSMError(f"{where}: metrics of answer_type drift are {' and/or '.join(DRIFT_METRICS)}, got {metrics!r}")

    def document(record):
        texts = []
        for field in (context_field, text_field):
            value = "" if field is None else record[field]
            if not isinstance(value, str):
                raise IMSMError(
                    f"{record.get('_source', path)}: field {field!r} must be a string of text, "
                    f"got {type(value).__name__}; fix that record"
                )
            texts.append(value)
        return texts[0], texts[1]

    return Task(
        **_file_fields(spec, data),
        prompt=lambda record: document(record)[0],
        golds=lambda record: [document(record)[1]],
        target=lambda record: document(record)[1],
        required_fields=tuple(f for f in (text_field, context_field) if f),
        answer_type="drift",
        metrics=tuple(metrics),
        description=str(spec.get("description", f"drift on the documents of {data.name}")),
        source=str(path),
        document=document,
    )


MULTIPLE_CHOICE_REQUIRED = ("name", "data", "prompt", "choices", "answer", "answer_type")
MULTIPLE_CHOICE_OPTIONAL = ("metrics", "version", "description", "chance")


def _multiple_choice_task(path: Path, spec: dict[str, Any], where: str) -> Task:
    """A multiple-choice task from its spec, checked whole; its records are checked as they load
    (`Task.gold_index`), each problem reported with the record's file and line."""
    missing = [key for key in MULTIPLE_CHOICE_REQUIRED if key not in spec]
    if missing:
        needed = ", ".join(MULTIPLE_CHOICE_REQUIRED)
        raise IMSMError(f"{where} is missing {', '.join(missing)}; a multiple-choice spec needs {needed}")
    known = MULTIPLE_CHOICE_REQUIRED + MULTIPLE_CHOICE_OPTIONAL
    unknown = sorted(set(spec) - set(known))
    if unknown:
        raise IMSMError(
            f"{where} has unknown key(s) {unknown} for answer_type multiple_choice; known keys: {', '.join(known)}"
        )
    prompt, choices_field, answer_field = spec["prompt"], spec["choices"], spec["answer"]
    if not isinstance(prompt, str) or not all(isinstance(f, str) and f for f in (choices_field, answer_field)):
        raise IMSMError(f"{where}: 'prompt' must be a template string, 'choices' and 'answer' field names")
    placeholders = _template_fields(prompt, where)
    metrics = spec.get("metrics", list(choice.METRICS))
    metrics = [metrics] if isinstance(metrics, str) else metrics
    if not isinstance(metrics, list) or not metrics:
        raise IMSMError(f"{where}: 'metrics' must list one or both of {', '.join(choice.METRICS)}")
    _check_metrics(metrics, "multiple_choice", where)
    chance = spec.get("chance")
    if chance is not None and (isinstance(chance, bool) or not isinstance(chance, int | float) or not 0 < chance < 1):
        raise IMSMError(f"{where}: chance must be a number between 0 and 1 (0.25 for four options), got {chance!r}")
    data = (path.parent / str(spec["data"])).resolve()

    def options(record) -> list[str]:
        value = record[choices_field]
        if not isinstance(value, list) or len(value) < 2 or not all(isinstance(v, str) for v in value):
            shown = json.dumps(value, ensure_ascii=False)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise IMSMError(
                f"{record.get('_source', path)}: field {choices_field!r} must be a list of two or more option "
                f"strings, got {shown}; fix that record"
            )
        return value

    def gold(record) -> int:
        value, texts = record[answer_field], options(record)
        if isinstance(value, str):
            if value not in texts:
                raise IMSMError(
                    f"{record.get('_source', path)}: gold {value!r} (field {answer_field!r}) is not among the "
                    f"choices {texts}; give the gold option's text exactly, or its 0-based index as a number"
                )
            return texts.index(value)  # a text listed twice is the first of them, as in lm-eval
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(texts):
            raise IMSMError(
                f"{record.get('_source', path)}: gold index {value!r} (field {answer_field!r}) is out of range "
                f"for {len(texts)} choices; give a 0-based index from 0 to {len(texts) - 1}, or the option's text"
            )
        return value

    return choice.multiple_choice_task(
        **_file_fields(spec, data),
        chance=None if chance is None else float(chance),
        context=lambda record: prompt.format_map(record),
        choices=options,
        gold=gold,
        metrics=tuple(metrics),
        required_fields=tuple(dict.fromkeys((*placeholders, choices_field, answer_field))),
        description=str(spec.get("description", f"custom multiple-choice task from {path.name}")),
        source=str(path),
    )
