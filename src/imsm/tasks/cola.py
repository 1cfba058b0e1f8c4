"""CoLA: is a sentence grammatical? Paper protocol: in-domain + out-of-domain dev (1043), MCC."""

from imsm.tasks.base import HubSource, Task

PROMPT = (
    "Given a sentence, judge the grammatical acceptability of the sentence with yes or no.\n"
    "Sentence: {sentence}\nOutput:"  # the paper's stray leading space and "Sentence:{s}" fixed
)


def _answer(record):
    return "yes" if str(record["label"]).strip() == "1" else "no"


TASK = Task(
    name="cola",
    version="1",
    directory="cola",
    splits={
        "train": ("in_domain_train.jsonl",),
        "dev": ("in_domain_dev.jsonl", "out_of_domain_dev.jsonl"),
        "in_domain_dev": ("in_domain_dev.jsonl",),
        "out_of_domain_dev": ("out_of_domain_dev.jsonl",),
    },
    eval_split="dev",
    train_split="train",
    prompt=lambda r: PROMPT.format(sentence=r["sentence"]),
    golds=lambda r: [_answer(r)],
    target=_answer,
    required_fields=("sentence", "label"),
    answer_type="yes_no",
    metrics=("mcc", "accuracy"),
    max_new_tokens=16,
    # GLUE's CoLA validation is the in-domain dev only (527), not the paper's 1043.
    hub=HubSource(
        "nyu-mll/glue",
        "cola",
        {"train": "train", "in_domain_dev": "validation"},
        lambda r: {"sentence": r["sentence"], "label": str(r["label"])},
    ),
    description="grammatical acceptability, yes/no (in- + out-of-domain dev, 1043)",
)
