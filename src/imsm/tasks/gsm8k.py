"""GSM8K: grade-school math word problems (test, 1319), accuracy on the final number.

The model is trained on the reference solution written the way the paper's prompt asks for it:
calculator annotations removed and "#### N" turned into "The answer is N.".
"""

import re

from imsm.metrics import extract_number
from imsm.tasks.base import HubSource, Task

PROMPT = (
    "You are an expert in math.\nBelow is a math question.\n"
    "Write a response that appropriately answers the question.\n"
    "Your final answer should be an integer at the end of your response, formatted as: The answer is {{answer}}.\n"
    "{question}"
)


def solution_text(record) -> str:
    """The reference solution without `<<...>>` annotations, ending "The answer is N."."""
    reasoning, _, final = record["answer"].rpartition("####")
    reasoning = re.sub(r"<<[^>]*>>", "", reasoning).strip()
    return f"{reasoning}\nThe answer is {final.strip()}.".strip()


TASK = Task(
    name="gsm8k",
    version="1",
    directory="gsm8k",
    splits={"train": ("train.jsonl",), "test": ("test.jsonl",)},
    eval_split="test",
    train_split="train",
    prompt=lambda r: PROMPT.format(question=r["question"]),
    golds=lambda r: [extract_number(r["answer"].rpartition("####")[2]) or r["answer"]],
    target=solution_text,
    required_fields=("question", "answer"),
    answer_type="number",
    metrics=("accuracy",),
    max_new_tokens=256,
    hub=HubSource("openai/gsm8k", "main", {"train": "train", "test": "test"}, lambda r: dict(r)),
    description="math word problems, final-number accuracy (test, 1319)",
)
