"""SciQ: crowd-sourced science exam questions with a supporting paragraph, four options (test, 1000).

Scored as lm-evaluation-harness 0.4.13 scores it (`tasks/sciq/sciq.yaml`): the context is the
support paragraph, left-stripped, then "\\nQuestion: {question}\\nAnswer:" (116 rows have no
paragraph, so their context starts with the newline); the options are
`[distractor1, distractor2, distractor3, correct_answer]`, so the gold is always index 3. In two
rows (lines 719 and 885) the correct answer equals a distractor: both options get the same
log-likelihood, the tie goes to the first, and the question counts as wrong, as in lm-eval.
"""

from imsm.tasks.base import HubSource
from imsm.tasks.choice import multiple_choice_task

PROMPT = "{support}\nQuestion: {question}\nAnswer:"  # sciq.yaml doc_to_text, with support.lstrip()
FIELDS = ("question", "distractor1", "distractor2", "distractor3", "correct_answer", "support")

TASK = multiple_choice_task(
    name="sciq",
    context=lambda r: PROMPT.format(support=r["support"].lstrip(), question=r["question"]),
    choices=lambda r: [r["distractor1"], r["distractor2"], r["distractor3"], r["correct_answer"]],
    gold=lambda r: 3,  # doc_to_target: 3, the correct answer's place among the choices
    options=4,
    version="1",
    directory="sciq",
    splits={"test": ("test.jsonl",)},
    eval_split="test",
    required_fields=FIELDS,
    hub=HubSource("allenai/sciq", None, {"test": "test"}, lambda r: {field: r[field] for field in FIELDS}),
    description="science questions with a support paragraph, log-likelihood of four options (test, 1000)",
)
