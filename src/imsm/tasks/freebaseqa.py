"""FreebaseQA: trivia questions over Freebase (the paper's 3996-question eval set); a forgetting probe."""

from imsm.tasks.base import Task

PROMPT = (
    "Please provide a concise answer to the following question using one or a few words.\nQuestion: {question}\nAnswer:"
)

TASK = Task(
    name="freebaseqa",
    version="1",
    directory="freebaseqa",
    splits={"eval": ("eval.jsonl",)},
    eval_split="eval",
    prompt=lambda r: PROMPT.format(question=r["question"]),
    golds=lambda r: [r["answer"]],
    target=lambda r: r["answer"],
    required_fields=("question", "answer"),
    answer_type="text",
    metrics=("contains", "hit@5", "exact_match"),
    max_new_tokens=32,
    # The paper's eval file is not on the hub in this form: only a data directory has it.
    hub=None,
    description="trivia questions, gold contained in the answer (eval, 3996)",
)
