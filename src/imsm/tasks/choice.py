"""Building multiple-choice tasks the way lm-evaluation-harness 0.4.13 builds them.

A question is a context (lm-eval's `doc_to_text`), its options (`doc_to_choice`) and the gold
option's index (`doc_to_target`). Each option is scored as the continuation " " + option after the
context (lm-eval's default `target_delimiter` is one space); WinoGrande turns this around and
gives each option its own context (`requests`). The records are checked when they are loaded, so
a bad one is reported with its file and line before any model is read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from imsm.errors import IMSMError
from imsm.tasks.base import Record, Task

# lm-eval's default `target_delimiter`: what separates the context from each option's text.
TARGET_DELIMITER = " "
METRICS = ("accuracy", "accuracy_norm")


def options_after(context: str, options: Sequence[str]) -> list[tuple[str, str]]:
    """One (context, continuation) request per option: the option after the context and a space."""
    return [(context, TARGET_DELIMITER + option) for option in options]


def multiple_choice_task(
    *,
    name: str,
    context: Callable[[Record], str],
    choices: Callable[[Record], list[str]],
    gold: Callable[[Record], int],
    requests: Callable[[Record], list[tuple[str, str]]] | None = None,
    metrics: Sequence[str] = METRICS,
    options: int | None = None,
    chance: float | None = None,
    **task_fields,
) -> Task:
    """A `Task` of answer_type "multiple_choice".

    Args:
        name: Registry name.
        context: record -> the question as the model reads it (lm-eval's `doc_to_text`).
        choices: record -> the option texts (lm-eval's `doc_to_choice`).
        gold: record -> the gold option's 0-based index. Whatever it raises for a record without
            one (KeyError, ValueError, IndexError, TypeError) is reported with the record's file
            and line when the data is loaded.
        requests: record -> one (context, continuation) pair per option; by default each option
            after `context` and a space.
        metrics: Reported metrics (registered, and defined for multiple choice).
        options: How many options a question has (the usual number where it varies): the task's
            chance accuracy is 1 / options.
        chance: The chance accuracy where the options do not give it (a spec declares it); None
            with `options` None: unknown.
        **task_fields: The rest of `Task`'s fields (version, directory, splits, eval_split,
            required_fields, hub, description, source).
    """
    make_requests = requests or (lambda record: options_after(context(record), choices(record)))

    def gold_index(record: Record) -> int:
        where = f"{record.get('_source', 'a record')}: task {name}"
        try:
            options = choices(record)
            index = gold(record)
            pairs = make_requests(record)
        except IMSMError:
            raise
        except (KeyError, ValueError, IndexError, TypeError) as error:
            problem = f"{type(error).__name__}: {error}"
            raise IMSMError(f"{where} cannot read the options or the gold ({problem}); fix that record") from None
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(options):
            raise IMSMError(f"{where}: gold index {index!r} is not one of the {len(options)} options; fix that record")
        if len(pairs) != len(options):
            raise IMSMError(f"{where}: {len(pairs)} scoring requests for {len(options)} options (a bug in the task)")
        return index

    def gold_request(record: Record) -> tuple[str, str]:
        return make_requests(record)[gold_index(record)]

    return Task(
        name=name,
        prompt=lambda record: gold_request(record)[0],
        golds=lambda record: [choices(record)[gold_index(record)]],
        # What the model would be trained on, and what `imsm inspect-gate` reads: the gold
        # continuation without the delimiter (`PromptFormatter.answer_ids` puts the space back).
        target=lambda record: gold_request(record)[1].removeprefix(TARGET_DELIMITER),
        answer_type="multiple_choice",
        metrics=tuple(metrics),
        max_new_tokens=1,  # nothing is generated
        choices=choices,
        requests=make_requests,
        gold_index=gold_index,
        chance=chance if options is None else 1 / options,
        **task_fields,
    )


__all__ = ["METRICS", "TARGET_DELIMITER", "multiple_choice_task", "options_after"]
