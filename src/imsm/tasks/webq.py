"""WebQuestions: open questions about Freebase entities (test, 2032); a forgetting probe."""

import re

from imsm.tasks.base import HubSource, Task

PROMPT = (
    "Please provide a concise answer to the following question using one or a few words.\nQuestion: {question}\nAnswer:"
)
# targetValue is a SEMPRE lisp list: (list (description "A") (description B) ...)
_DESCRIPTION = re.compile(r'\(description (?:"((?:[^"\\]|\\.)*)"|([^)]*))\)')


def gold_answers(record) -> list[str]:
    answers = [(quoted or bare).replace('\\"', '"') for quoted, bare in _DESCRIPTION.findall(record["targetValue"])]
    return answers or [record["targetValue"]]


TASK = Task(
    name="webq",
    version="1",
    directory="webquestions",
    splits={"train": ("train.jsonl",), "test": ("test.jsonl",)},
    eval_split="test",
    prompt=lambda r: PROMPT.format(question=r["utterance"]),
    golds=gold_answers,
    target=lambda r: gold_answers(r)[0],
    required_fields=("utterance", "targetValue"),
    answer_type="text",
    metrics=("contains", "hit@5", "exact_match"),
    max_new_tokens=32,
    hub=HubSource(
        "stanfordnlp/web_questions",
        None,
        {"train": "train", "test": "test"},
        lambda r: {
            "utterance": r["question"],
            "targetValue": "(list " + " ".join(f'(description "{a}")' for a in r["answers"]) + ")",
        },
    ),
    description="open-domain factoid questions, gold contained in the answer (test, 2032)",
)
