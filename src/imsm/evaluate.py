"""Evaluating a model on tasks: greedy generation scored by the task's metrics, plus scores
that do not depend on answer length.

For every example the model generates an answer (batched, KV-cached, greedy), which the task's
metrics score. A teacher-forced reading of the task's target answer gives its likelihood: its
mean negative log-likelihood per token (no generation involved), and for yes/no tasks the
first-token margin log p(yes) - log p(no), whose AUC over the corpus ignores any global yes/no
bias. Both read the same prompt, so they share its prefill (`answer_and_score`); the separate
passes (`generate_answers`, `score_targets`) remain for callers that want one of them. Every
model (base, peft or IMSM) runs through `IMSMModel`. For a gated IMSM model the teacher-forced
reading also takes the gate: the mean weight g it gives the frozen branch (h = g h_frozen +
(1 - g) h_tuned) over the target's tokens and features, which says how much of each answer comes
from the base model's memory.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from imsm.eval_journal import EvalJournal, fingerprint
from imsm.generate import generate_answers, left_padded
from imsm.metrics import METRICS, mean, roc_auc, yes_no_label
from imsm.model.siamese import IGNORE_INDEX, IMSMModel
from imsm.prompting import PromptFormatter
from imsm.tasks.base import Record, Task

YES_WORDS = ("yes", "Yes", "YES")
NO_WORDS = ("no", "No", "NO")


@dataclass
class TaskResult:
    """One task's outcome: corpus metrics and the per-example rows behind them."""

    task: Task
    split: str
    metrics: dict[str, float]
    examples: list[dict[str, Any]]
    seconds: float
    resumed_examples: int = 0  # answered by an earlier, interrupted run (from its journal)

    def summary(self) -> dict[str, Any]:
        summary = {
            "version": self.task.version,
            "split": self.split,
            "source": self.task.source,
            "n": len(self.examples),
            "metrics": self.metrics,
            "seconds": round(self.seconds, 2),
            "examples_per_s": round(len(self.examples) / self.seconds, 3) if self.seconds else None,
        }
        if self.resumed_examples:
            # `seconds` covers this run only, so a throughput over all examples would mislead.
            summary.update(resumed_examples=self.resumed_examples, examples_per_s=None)
        return summary


def _word_token_ids(tokenizer, words: Sequence[str], formatter: PromptFormatter) -> list[int]:
    """Token ids that spell one of `words` on their own, as the answer's first token would."""
    ids = set()
    for word in words:
        for text in (word, " " + word):
            encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(encoded) == 1:
                ids.add(encoded[0])
        first = formatter.answer_ids(word)
        if first:
            ids.add(first[0])
    return sorted(ids)


@torch.no_grad()
def score_targets(
    model: IMSMModel,
    formatter: PromptFormatter,
    prompts: Sequence[str],
    targets: Sequence[str],
    batch_size: int = 8,
    yes_no: bool = False,
    on_batch_done=None,
) -> tuple[list[float], list[float | None], list[float | None]]:
    """Teacher-forced scores of `targets` after `prompts`.

    Returns:
        (mean NLL per target token in nats, first-token yes-vs-no log-odds margin or None, mean
        gate weight on the frozen branch over the target's tokens, or None without a gate).
        After each batch `on_batch_done(indices, scores)` receives the batch's indices and their
        (nll, margin, weight) triples.
    """
    tokenizer = formatter.tokenizer
    pad_id = formatter.pad_id
    yes_ids = _word_token_ids(tokenizer, YES_WORDS, formatter) if yes_no else []
    no_ids = _word_token_ids(tokenizer, NO_WORDS, formatter) if yes_no else []
    pairs = [(formatter.prompt_ids(p), formatter.answer_ids(t)) for p, t in zip(prompts, targets, strict=True)]
    order = sorted(range(len(pairs)), key=lambda i: -sum(map(len, pairs[i])))
    nll: list[float] = [math.nan] * len(pairs)
    margins: list[float | None] = [None] * len(pairs)
    frozen_weights: list[float | None] = [None] * len(pairs)
    gate_values: list[torch.Tensor] = []  # the gate's [N, d] output of the current batch
    gate_hook = None
    if getattr(model, "gate", None) is not None:
        gate_hook = model.gate.register_forward_hook(lambda module, args, output: gate_values.append(output))
    try:
        for start in range(0, len(order), batch_size):
            gate_values.clear()
            rows = order[start : start + batch_size]
            _score_batch(model, pairs, rows, pad_id, yes_no, yes_ids, no_ids, nll, margins)
            if gate_values:
                # logits_at runs the gate once, on the target positions only, in row-major order.
                per_position = gate_values[-1].float().mean(dim=-1).cpu()  # [N]
                counts = [len(pairs[i][1]) for i in rows]
                for index, part in zip(rows, torch.split(per_position, counts), strict=True):
                    frozen_weights[index] = float(part.mean())
            if on_batch_done is not None:
                on_batch_done(rows, [(nll[i], margins[i], frozen_weights[i]) for i in rows])
    finally:
        if gate_hook is not None:
            gate_hook.remove()
    return nll, margins, frozen_weights


@torch.no_grad()
def answer_and_score(
    model: IMSMModel,
    formatter: PromptFormatter,
    prompts: Sequence[str],
    targets: Sequence[str],
    max_new_tokens: int = 32,
    batch_size: int = 8,
    yes_no: bool = False,
    on_batch_done=None,
) -> tuple[list[str], list[float], list[float | None], list[float | None]]:
    """`generate_answers` and `score_targets` in one pass: each prompt is encoded once.

    The same answers and (to float rounding) the same scores as the two separate passes; on
    prompt-bound tasks it costs about half as much. After each batch `on_batch_done(indices,
    answers, scores)` receives the batch's indices, answers and (nll, margin, weight) triples.

    Returns:
        (answers, NLL per target token, yes-vs-no margins or None, frozen-branch gate weights or None).
    """
    from imsm.model.decode import generate_and_score

    tokenizer = formatter.tokenizer
    pad_id = formatter.pad_id
    yes_ids = _word_token_ids(tokenizer, YES_WORDS, formatter) if yes_no else []
    no_ids = _word_token_ids(tokenizer, NO_WORDS, formatter) if yes_no else []
    encoded = [formatter.prompt_ids(p) for p in prompts]
    target_ids = [formatter.answer_ids(t) for t in targets]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))  # little padding to decode
    answers: list[str] = [""] * len(prompts)
    triples: list[tuple[float, float | None, float | None]] = [(math.nan, None, None)] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        input_ids, attention_mask = left_padded([encoded[i] for i in rows], pad_id)
        width = input_ids.shape[1]
        output, scores = generate_and_score(
            model,
            input_ids.to(model.device),
            attention_mask.to(model.device),
            [target_ids[i] for i in rows],
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
        )
        texts = [t.strip() for t in tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)]
        batch = []
        for row, index in enumerate(rows):
            first = scores.first_log_probs[row]  # [V], the answer's first token
            margin = float(torch.logsumexp(first[yes_ids], 0) - torch.logsumexp(first[no_ids], 0)) if yes_no else None
            batch.append((float(-scores.log_probs[row].mean()), margin, scores.frozen_weights[row]))
            answers[index], triples[index] = texts[row], batch[-1]
        if on_batch_done is not None:
            on_batch_done(rows, texts, batch)
    return answers, [t[0] for t in triples], [t[1] for t in triples], [t[2] for t in triples]


def _score_batch(model, pairs, rows, pad_id, yes_no, yes_ids, no_ids, nll, margins) -> None:
    """One batch of `score_targets`: fills `nll` and `margins` at the batch's indices."""
    width = max(len(pairs[i][0]) + len(pairs[i][1]) for i in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    query_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for row, index in enumerate(rows):  # right padding: prompt, target, pads
        prompt_ids, target_ids = pairs[index]
        ids = prompt_ids + target_ids
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        query_mask[row, : len(prompt_ids)] = True
        labels[row, len(prompt_ids) : len(ids)] = torch.tensor(target_ids)
    select = labels[:, 1:] != IGNORE_INDEX  # positions predicting a target token
    select = torch.cat([select, torch.zeros_like(select[:, :1])], dim=1)  # [B, T]
    device = model.device
    logits = model.logits_at(input_ids.to(device), attention_mask.to(device), query_mask.to(device), select.to(device))
    log_probs = torch.log_softmax(logits.float(), dim=-1).cpu()  # [N, V]
    rows_of, cols_of = select.nonzero(as_tuple=True)
    gold = labels[rows_of, cols_of + 1]
    token_log_probs = log_probs.gather(1, gold[:, None])[:, 0]  # [N]
    for row, index in enumerate(rows):
        mine = rows_of == row
        nll[index] = float(-token_log_probs[mine].mean())
        if yes_no:
            first = log_probs[mine.nonzero()[0, 0]]  # the distribution of the answer's first token
            margins[index] = float(torch.logsumexp(first[yes_ids], 0) - torch.logsumexp(first[no_ids], 0))


def evaluate_task(
    model: IMSMModel,
    formatter: PromptFormatter,
    task: Task,
    records: list[Record],
    split: str,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    likelihood: bool = True,
    progress: bool = True,
    journal_path: Path | None = None,
    run_settings: dict[str, Any] | None = None,
) -> TaskResult:
    """Generate, score and aggregate one task.

    With `journal_path`, every finished batch is journaled there, and examples a journal from an
    earlier, interrupted run with the same `run_settings` (model, adapter, dtype, ...), task and
    texts already holds are not evaluated again. The caller removes the journal once the results
    are written.
    """
    started = time.perf_counter()
    prompts = [task.prompt(r) for r in records]
    golds = [task.golds(r) for r in records]
    targets = [task.target(r) for r in records] if likelihood else []
    max_new_tokens = max_new_tokens or task.max_new_tokens
    journal = None
    if journal_path is not None:
        settings = {
            **(run_settings or {}),
            "task": task.name,
            "task_version": task.version,
            "split": split,
            "max_new_tokens": max_new_tokens,
            "likelihood": likelihood,
        }
        journal = EvalJournal(journal_path, fingerprint(settings, prompts + targets))
    predictions: list[str] = [""] * len(records)
    scores: list[tuple[float, float | None, float | None]] = [(math.nan, None, None)] * len(records)
    if journal is not None:
        for index, text in journal.predictions.items():
            predictions[index] = text
        for index, triple in journal.scores.items():
            scores[index] = triple
    to_answer = [i for i in range(len(records)) if journal is None or i not in journal.predictions]
    to_score = [i for i in range(len(records)) if journal is None or i not in journal.scores] if likelihood else []
    to_score = [i for i in to_score if formatter.answer_ids(targets[i])]  # an empty target has no likelihood
    # Examples that need both go through one pass (one prefill per prompt); an older journal
    # may hold one half of an example, and the other half then runs on its own.
    both = sorted(set(to_answer) & set(to_score))
    answer_only = sorted(set(to_answer) - set(to_score))
    score_only = sorted(set(to_score) - set(to_answer))
    yes_no = task.answer_type == "yes_no"
    try:
        with tqdm(
            total=len(records),
            initial=len(records) - len(both) - len(answer_only) - len(score_only),
            desc=task.name,
            unit="ex",
            disable=not progress,
            leave=False,
        ) as bar:

            def keep_answers(subset: list[int], rows: list[int], texts: list[str]) -> None:
                indices = [subset[r] for r in rows]
                for index, text in zip(indices, texts, strict=True):
                    predictions[index] = text
                if journal is not None:
                    journal.add_predictions(indices, texts)

            def keep_scores(subset: list[int], rows: list[int], triples) -> None:
                indices = [subset[r] for r in rows]
                for index, triple in zip(indices, triples, strict=True):
                    scores[index] = triple
                if journal is not None:
                    journal.add_scores(indices, triples)

            def answered_and_scored(rows, texts, triples) -> None:
                keep_answers(both, rows, texts)
                keep_scores(both, rows, triples)
                bar.update(len(rows))

            def answered(rows, texts) -> None:
                keep_answers(answer_only, rows, texts)
                bar.update(len(rows))

            def scored(rows, triples) -> None:
                keep_scores(score_only, rows, triples)
                bar.update(len(rows))

            if both:
                answer_and_score(
                    model,
                    formatter,
                    [prompts[i] for i in both],
                    [targets[i] for i in both],
                    max_new_tokens,
                    batch_size,
                    yes_no,
                    answered_and_scored,
                )
            if answer_only:
                generate_answers(
                    model, formatter, [prompts[i] for i in answer_only], max_new_tokens, batch_size, answered
                )
            if score_only:
                score_targets(
                    model,
                    formatter,
                    [prompts[i] for i in score_only],
                    [targets[i] for i in score_only],
                    batch_size,
                    yes_no,
                    scored,
                )
    finally:
        if journal is not None:
            journal.close()
    nll = [s[0] for s in scores]
    margins = [s[1] for s in scores]
    frozen_weights = [s[2] for s in scores]
    metric_names = list(task.metrics)
    if task.answer_type == "text" and "hit@5" not in metric_names:
        metric_names.append("hit@5")  # the length-independent companion of "contains"
    per_example = {
        name: [METRICS.get(name).score(p, g, task.answer_type) for p, g in zip(predictions, golds, strict=True)]
        for name in metric_names
    }
    metrics = {name: METRICS.get(name).aggregate(values) for name, values in per_example.items()}
    metrics["answer_chars"] = mean([len(p) for p in predictions])
    if likelihood:
        metrics["gold_nll"] = mean([v for v in nll if not math.isnan(v)])
        if any(w is not None for w in frozen_weights):
            metrics["gate_frozen_weight"] = mean([w for w in frozen_weights if w is not None])
    if task.answer_type == "yes_no":
        gold_yes = [int(yes_no_label(g[0]) == "yes") for g in golds]
        metrics["predicted_yes_rate"] = mean([float(yes_no_label(p) == "yes") for p in predictions])
        metrics["gold_yes_rate"] = mean([float(y) for y in gold_yes])
        if likelihood:
            metrics["yes_no_auc"] = roc_auc([m for m in margins], gold_yes)
            metrics["yes_no_margin"] = mean([m for m in margins])
    examples = []
    for i, record in enumerate(records):
        examples.append(
            {
                "index": i,
                "source": record.get("_source"),
                "prompt": prompts[i],
                "prediction": predictions[i],
                "golds": golds[i],
                "scores": {name: per_example[name][i] for name in metric_names},
                "gold_nll": None if math.isnan(nll[i]) else round(nll[i], 5),
                "yes_no_margin": None if margins[i] is None else round(margins[i], 5),
                "gate_frozen_weight": None if frozen_weights[i] is None else round(frozen_weights[i], 5),
            }
        )
    resumed = len(records) - len(to_answer)
    return TaskResult(task, split, metrics, examples, time.perf_counter() - started, resumed)


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file, so readers never see half a file."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def predictions_path(output: Path, task: Task) -> Path:
    """Per-example file beside the metrics file: `results.json` -> `results.mrpc.jsonl`."""
    safe_name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in task.name)
    return output.with_name(f"{output.stem}.{safe_name}.jsonl")


def journal_path(output: Path, task: Task) -> Path:
    """Resume journal beside the metrics file: `results.json` -> `results.mrpc.partial.jsonl`."""
    return predictions_path(output, task).with_suffix(".partial.jsonl")


def write_results(output: Path, header: dict[str, Any], results: list[TaskResult]) -> None:
    for result in results:
        lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in result.examples)
        write_atomically(predictions_path(output, result.task), lines)
    payload = {**header, "tasks": {r.task.name: r.summary() for r in results}}
    write_atomically(output, json.dumps(payload, indent=2) + "\n")


def format_table(results: list[TaskResult]) -> str:
    """A plain table, proportions in percent, one task per line."""
    lines = []
    for result in results:
        cells = []
        for name, value in result.metrics.items():
            percent = (
                name in METRICS
                and METRICS.get(name).percent
                or name in ("yes_rate", "predicted_yes_rate", "gold_yes_rate")
            )
            cells.append(f"{name} {100 * value:.1f}" if percent else f"{name} {value:.3f}")
        lines.append(f"{result.task.name:<11} n={len(result.examples):<5} " + "  ".join(cells))
    return "\n".join(lines)
