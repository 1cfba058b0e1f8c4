"""ARC-Easy and ARC-Challenge: grade-school science exam questions with 3-5 options (test, 2376 / 1172).

Scored as lm-evaluation-harness 0.4.13 scores them (`tasks/arc/arc_easy.yaml`, which
`arc_challenge.yaml` includes): the context is "Question: {question}\\nAnswer:", the options are
`choices.text`, and the gold is the position of `answerKey` among `choices.label`. Labels are
letters, except in 119 rows (Easy 97, Challenge 22) where they and the key are digits "1"-"4":
the position, not the letter, is what counts.
"""

from imsm.tasks.base import HubSource
from imsm.tasks.choice import multiple_choice_task

PROMPT = "Question: {question}\nAnswer:"  # arc_easy.yaml doc_to_text


def _context(record) -> str:
    return PROMPT.format(question=record["question"])


def _choices(record) -> list[str]:
    return list(record["choices"]["text"])  # doc_to_choice: "{{choices.text}}"


def _gold(record) -> int:
    return list(record["choices"]["label"]).index(record["answerKey"])  # doc_to_target


def _arc_task(name: str, hub_name: str, size: int, level: str):
    return multiple_choice_task(
        name=name,
        context=_context,
        choices=_choices,
        gold=_gold,
        options=4,  # 3-5 per question, nearly always 4
        version="1",
        directory=name,
        splits={"test": ("test.jsonl",)},
        eval_split="test",
        required_fields=("question", "choices", "answerKey"),
        # The hub's ai2_arc rows are the shape of our files (they were exported from it).
        hub=HubSource("allenai/ai2_arc", hub_name, {"test": "test"}, dict),
        description=f"grade-school science questions, {level} set, log-likelihood of 3-5 options (test, {size})",
    )


ARC_EASY = _arc_task("arc_easy", "ARC-Easy", 2376, "easy")
ARC_CHALLENGE = _arc_task("arc_challenge", "ARC-Challenge", 1172, "challenge")
TASKS = (ARC_EASY, ARC_CHALLENGE)
