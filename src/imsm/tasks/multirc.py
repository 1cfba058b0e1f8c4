"""MultiRC as the paper probes it: 312 yes/no questions over MultiRC passages; a forgetting probe."""

from imsm.tasks.base import Task

PROMPT = (
    "Please answer the question according to the contents just with yes or no.\n"
    "Question: {question}\nContent: {passage}\nAnswer:"
)

TASK = Task(
    name="multirc",
    version="1",
    directory="multirc_yesno",
    splits={"test": ("test.jsonl",)},
    eval_split="test",
    prompt=lambda r: PROMPT.format(question=r["question"], passage=r["passage"]),
    golds=lambda r: [str(r["answer"]).strip().lower()],
    target=lambda r: str(r["answer"]).strip().lower(),
    required_fields=("question", "passage", "answer"),
    answer_type="yes_no",
    metrics=("accuracy", "f1"),
    max_new_tokens=16,
    hub=None,  # the paper's own 312-question file; only a data directory has it
    description="yes/no questions over MultiRC passages (the paper's 312-question probe)",
)
