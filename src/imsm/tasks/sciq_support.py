"""SciQ's support paragraphs as plain text: drift from the base model on general science prose.

The paragraphs (test split, 884 non-empty of 1000) are textbook prose about physics, chemistry,
biology and earth science, written for students: general text a fine-tuned model should still
read as the base model does. Each is scored whole, with an empty context (after the BOS token).
Caveat: `sciq` scores the same rows' questions as a multiple-choice probe with these paragraphs
in the prompt, so the two probes share text; and the prose is one register (science textbooks),
not the web at large.
"""

from imsm.tasks.base import HubSource, Task


def _document(record):
    return "", record["support"].strip()  # 116 rows have no paragraph: "" is skipped, not scored


TASK = Task(
    name="sciq_support",
    version="1",
    directory="sciq",
    splits={"test": ("test.jsonl",)},
    eval_split="test",
    prompt=lambda r: _document(r)[0],
    golds=lambda r: [_document(r)[1]],
    target=lambda r: _document(r)[1],
    required_fields=("support",),
    answer_type="drift",
    metrics=("drift_nll", "drift_kl"),
    hub=HubSource("allenai/sciq", None, {"test": "test"}, lambda r: {"support": r["support"]}),
    description="drift on plain text: SciQ's test support paragraphs (884 non-empty of 1000)",
    document=_document,
)
