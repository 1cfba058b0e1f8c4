"""ROPES: reading comprehension over a background passage and a situation (dev, 1688)."""

from imsm.tasks.base import HubSource, Task

PROMPT = (
    "Given an article and a corresponding question about the article, answer the question accurately "
    "based on the provided context in the articles.\n"
    "Article: {background} {situation}\nQuestion: {question}\nAnswer:"
)


def _golds(record):
    return [answer["text"] for answer in record["answers"]]


TASK = Task(
    name="ropes",
    version="1",
    directory="ropes",
    splits={"train": ("train.jsonl",), "dev": ("dev.jsonl",)},
    eval_split="dev",
    train_split="train",
    prompt=lambda r: PROMPT.format(background=r["background"], situation=r["situation"], question=r["question"]),
    golds=_golds,
    target=lambda r: _golds(r)[0],
    required_fields=("background", "situation", "question", "answers"),
    answer_type="text",
    metrics=("exact_match", "token_f1", "contains", "hit@5"),
    max_new_tokens=32,
    hub=HubSource(
        "allenai/ropes",
        None,
        {"train": "train", "dev": "validation"},
        lambda r: {**r, "answers": [{"text": t} for t in r["answers"]["text"]]},
    ),
    description="reasoning over paragraph effects in situations, short answers (dev, 1688)",
)
