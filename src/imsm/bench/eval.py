"""Evaluation throughput of IMSM against plain peft (`imsm bench eval`), through `imsm eval`'s code.

Both evaluate the same examples with the same prompts, batch size, dtype and generation cap:
greedy, KV-cached generation of the answers and (unless --no-likelihood) the teacher-forced
reading of the gold answer for its NLL and the yes/no margin, in one pass per prompt as `imsm
eval` does. "vanilla" is the same peft adapter without the frozen branch and gate (fusion none),
so the ratio isolates what IMSM adds. "doubled" is vanilla on every example twice: the
arithmetic of both branches with none of IMSM's own work, so vanilla time / doubled time is the
ceiling of the ratio when evaluation is compute-bound. "two passes" is vanilla with generation
and scoring as separate passes (the prompt encoded twice), what sharing the prefill saves.
"""

from __future__ import annotations

from typing import Any

from imsm.bench.decode import adapted_model
from imsm.bench.timing import interleaved_medians
from imsm.data import load_examples, resolve_data_dir
from imsm.evaluation.generation import answer_and_score, score_targets
from imsm.generate import generate_answers
from imsm.prompting import PromptFormatter
from imsm.tasks import get_task


def bench_eval(
    model_name: str = "smollm2-135m",
    peft: str = "lora",
    dtype: str = "auto",
    task_name: str = "mrpc",
    data_dir=None,
    limit: int = 200,
    batch_size: int = 16,
    repetitions: int = 3,
    likelihood: bool = True,
    doubled: bool = True,
) -> dict[str, Any]:

    task = get_task(task_name)
    records = load_examples(task, None, resolve_data_dir(data_dir), limit)
    prompts = [task.prompt(r) for r in records]
    targets = [task.target(r) for r in records]
    # Two loads with the same seed: the same adapter weights, with and without the frozen branch.
    imsm_model, tokenizer = adapted_model(model_name, dtype, peft, fusion="imsm")
    vanilla_model, _ = adapted_model(model_name, dtype, peft, fusion="none")
    formatter = PromptFormatter.for_tokenizer(tokenizer)
    yes_no = task.answer_type == "yes_no"

    def evaluate(model, count: int | None = None, copies: int = 1, one_pass: bool = True):
        some_prompts, some_targets = prompts[:count] * copies, targets[:count] * copies

        def run():
            if likelihood and one_pass:
                answer_and_score(model, formatter, some_prompts, some_targets, task.max_new_tokens, batch_size, yes_no)
                return
            generate_answers(model, formatter, some_prompts, task.max_new_tokens, batch_size)
            if likelihood:
                score_targets(model, formatter, some_prompts, some_targets, batch_size, yes_no=yes_no)

        return run

    for model in (imsm_model, vanilla_model):  # warm-up on one batch, not the whole set
        evaluate(model, batch_size)()
    functions = {"imsm": evaluate(imsm_model), "vanilla": evaluate(vanilla_model)}
    if doubled:
        functions["doubled"] = evaluate(vanilla_model, copies=2)
    if likelihood:
        functions["two passes"] = evaluate(vanilla_model, one_pass=False)
    seconds = interleaved_medians(functions, repetitions, warmup=False)
    n = len(records)
    result = {
        "model": model_name,
        "peft": peft,
        "task": task.name,
        "examples": n,
        "batch_size": batch_size,
        "likelihood": likelihood,
        "dtype": str(next(imsm_model.parameters()).dtype).removeprefix("torch."),
        "repetitions": repetitions,
        "imsm_examples_per_s": n / seconds["imsm"],
        "vanilla_examples_per_s": n / seconds["vanilla"],
        "ratio": seconds["vanilla"] / seconds["imsm"],
    }
    if doubled:
        result["doubled_ceiling"] = seconds["vanilla"] / seconds["doubled"]
    if likelihood:
        result["one_pass_speedup"] = seconds["two passes"] / seconds["vanilla"]
    return result
