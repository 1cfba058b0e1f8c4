"""PIQA: physical commonsense, which of two solutions reaches a goal (validation, 1838).

Scored as lm-evaluation-harness 0.4.13 scores it (`tasks/piqa/piqa.yaml`): the context is
"Question: {goal}\\nAnswer:", the options `[sol1, sol2]`, the gold `label` (0 or 1). Solutions
with trailing or double spaces are kept as given, as lm-eval keeps them.
"""

from imsm.tasks.base import HubSource
from imsm.tasks.choice import multiple_choice_task

PROMPT = "Question: {goal}\nAnswer:"  # piqa.yaml doc_to_text

TASK = multiple_choice_task(
    name="piqa",
    context=lambda r: PROMPT.format(goal=r["goal"]),
    choices=lambda r: [r["sol1"], r["sol2"]],  # doc_to_choice: "{{[sol1, sol2]}}"
    gold=lambda r: int(r["label"]),  # doc_to_target: label
    options=2,
    version="1",
    directory="piqa",
    splits={"validation": ("validation.jsonl",)},
    eval_split="validation",  # the test labels are not public
    required_fields=("goal", "sol1", "sol2", "label"),
    hub=HubSource(
        "baber/piqa",
        None,
        {"validation": "validation"},
        lambda r: {"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": int(r["label"])},
    ),
    description="physical commonsense, log-likelihood of two solutions (validation, 1838)",
)
