"""WinoGrande: which of two names or things fills the blank of a sentence (dev v1.1, XL, 1267).

Scored as lm-evaluation-harness 0.4.13 scores it (`tasks/winogrande/default.yaml` and
`preprocess_winogrande.py`), by partial evaluation: each option replaces the blank "_" in its own
context, the sentence up to the blank, and what is scored is the same continuation for both, the
rest of the sentence after the blank, stripped and after a space. The gold is `answer` ("1" or "2",
a string) minus one. lm-eval reports accuracy only, so does this task.
"""

from imsm.tasks.base import HubSource
from imsm.tasks.choice import TARGET_DELIMITER, multiple_choice_task

FIELDS = ("sentence", "option1", "option2", "answer")


def _choices(record) -> list[str]:
    return [record["option1"], record["option2"]]


def _requests(record) -> list[tuple[str, str]]:
    sentence = record["sentence"]
    blank = sentence.index("_")
    rest = sentence[blank + 1 :].strip()
    return [(sentence[:blank] + option, TARGET_DELIMITER + rest) for option in _choices(record)]


TASK = multiple_choice_task(
    name="winogrande",
    context=lambda r: r["sentence"],  # unused: each option has its own context (`requests`)
    choices=_choices,
    gold=lambda r: {"1": 0, "2": 1}[r["answer"]],
    requests=_requests,
    options=2,
    metrics=("accuracy",),
    version="1",
    directory="winogrande",
    splits={"dev": ("dev.jsonl",)},
    eval_split="dev",  # the test labels are not public
    required_fields=FIELDS,
    hub=HubSource(
        "allenai/winogrande",
        "winogrande_xl",
        {"dev": "validation"},
        lambda r: {field: r[field] for field in FIELDS},
    ),
    description="pronoun-style blanks, partial evaluation: log-likelihood of the rest of the sentence (dev, 1267)",
)
