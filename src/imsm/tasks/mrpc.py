"""MRPC: are two sentences paraphrases? Paper protocol: the labelled MSR test set (1725)."""

from imsm.tasks.base import HubSource, Task

PROMPT = (
    "Determine if the following two sentences are semantically equivalent and output yes or no.\n"
    "Sentence1: {s1}\nSentence2: {s2}\nOutput:"  # the paper's "Ouput:" typo fixed
)


def _answer(record):
    return "yes" if str(record["Quality"]).strip() == "1" else "no"


TASK = Task(
    name="mrpc",
    version="1",
    directory="mrpc",
    splits={"train": ("train.jsonl",), "dev": ("dev.jsonl",), "test": ("test.jsonl",)},
    eval_split="test",
    train_split="train",
    prompt=lambda r: PROMPT.format(s1=r["#1 String"], s2=r["#2 String"]),
    golds=lambda r: [_answer(r)],
    target=_answer,
    required_fields=("#1 String", "#2 String", "Quality"),
    answer_type="yes_no",
    metrics=("accuracy", "f1"),
    max_new_tokens=16,
    # GLUE's MRPC test labels are hidden, so online users get train and dev only.
    hub=HubSource(
        "nyu-mll/glue",
        "mrpc",
        {"train": "train", "dev": "validation"},
        lambda r: {"#1 String": r["sentence1"], "#2 String": r["sentence2"], "Quality": str(r["label"])},
    ),
    description="paraphrase detection, yes/no (MSR test, 1725)",
)
