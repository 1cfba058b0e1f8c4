"""A cell's result file, part by part: which part holds a variant's evaluations, where each was
computed, and a variant that takes another's evaluations because it computes the same thing.

A cell's result.json holds the adapter as trained at the top level and every other reading under
`variants.<key>`; each evaluated task has its metrics, its per-question columns and a record of
where and when it ran. Its per-example rows are WORK/<cell>/eval[.<variant>].TASK.jsonl.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from imsm.atomic_write import write_atomically
from imsm.experiment.variants import Variant
from imsm.model.persist import holds_saved_adapter
from imsm.model.siamese import IMSMModel
from imsm.provenance import now


def evaluated_part(result: dict[str, Any], variant: Variant) -> dict[str, Any]:
    """The part of a cell's result that holds one variant's metrics, evaluation and questions."""
    return result if variant.is_default else result.get("variants", {}).get(variant.key, {})


def journal_stem(variant: Variant, task: str) -> str:
    """eval.TASK, or eval.<variant>.TASK for a variant (its key with file-name-safe separators)."""
    slug = variant.key.replace(",", "_").replace("=", "-")
    return f"eval.{slug + '.' if slug else ''}{Path(task).stem}"


def keep_provenance(previous: dict[str, Any], result: dict[str, Any]) -> None:
    """Where each kept evaluation ran, and what trained the adapter before, when a cell's result is
    rewritten: by a later session on another machine, or after its adapter was trained again (its
    work directory lost; the new adapter then reads only the evaluations still owed). A file's header
    names the machine of its last write, so evaluations kept from before per-evaluation provenance
    are stamped with the previous header's."""
    if not previous:
        return
    earlier = {"machine": previous.get("machine"), "evaluated": previous.get("updated") or previous.get("created")}
    for part in [previous, *previous.get("variants", {}).values()]:
        for task, record in part.get("evaluation", {}).items():
            part["evaluation"][task] = {**earlier, **record}
    history = list(previous.get("earlier_training", []))
    trained_before, trained_now = previous.get("training") or {}, result["training"]
    # Another run, not the same one read again (a key older files lack compares as equal).
    keys = ("trained", "steps", "final_loss", "seconds")
    if trained_before and any(trained_before.get(k, trained_now.get(k)) != trained_now.get(k) for k in keys):
        history.append({"machine": earlier["machine"], **trained_before})
    if history:
        result["earlier_training"] = history


def unreduced_twin(result: dict[str, Any], variant: Variant, model: IMSMModel, adapter: Path) -> Variant | None:
    """The same reading without the intruder reduction, when the reduction left every adapter weight
    bitwise as trained (peft found no intruder dimension): the two then compute the same answers, so
    the variant takes that reading's evaluations instead of running them again. None otherwise."""
    if variant.intruders is None:
        return None
    twin = replace(variant, intruders=None)
    if not evaluated_part(result, twin).get("metrics") or not holds_saved_adapter(model.peft_model, adapter):
        return None
    return twin


def reuse_evaluation(
    result: dict[str, Any], target: dict[str, Any], twin: Variant, variant: Variant, task: str, run: Path
) -> None:
    """`twin`'s evaluation of `task` as `variant`'s: its metrics, questions and per-example rows,
    its record saying where they were computed and that they were reused."""
    source = evaluated_part(result, twin)
    target["metrics"][task] = source["metrics"][task]
    target["questions"][task] = source["questions"][task]
    record = source.get("evaluation", {}).get(task, {})
    reason = "peft's reduce_intruder_dimension left every adapter weight bitwise as trained"
    target["evaluation"][task] = {**record, "reused_from": twin.key or "as trained", "reused": now(), "why": reason}
    rows = run / f"{journal_stem(twin, task)}.jsonl"
    if rows.exists():
        write_atomically(run / f"{journal_stem(variant, task)}.jsonl", rows.read_text())
