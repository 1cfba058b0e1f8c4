"""Reusing the frozen branch's states: scoring with them equals scoring without, the frozen model
is not run when they are at hand, and the store on disk is checked, invalidated and rebuilt."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import random_batch, tiny_tokenizer
from imsm.evaluation.frozen_states import FrozenStateStore
from imsm.model.branches import FROZEN
from test_scoring import build

CONTINUATIONS = [[[5, 6, 7], [8], [9, 10]], [[11]], [[12, 13], [14, 15, 16, 17]]]


def count_frozen_runs(model) -> list[str]:
    """Record every forward that runs the frozen branch alone, or both branches."""
    calls: list[str] = []
    real = model.branch_hidden_states

    def spy(input_ids, attention_mask, branch, *args, **kwargs):
        calls.append(branch)
        return real(input_ids, attention_mask, branch, *args, **kwargs)

    model.branch_hidden_states = spy
    return calls


@pytest.mark.parametrize("shared_layers", [False, True])
@pytest.mark.parametrize("fusion", ["imsm", "no-query", "mean"])
def test_scores_with_reused_frozen_states_equal_those_without(fusion, shared_layers):
    model = build(fusion, shared_layers)
    input_ids, attention_mask = random_batch(batch_size=3, length=8)
    reference = model.score_continuations(input_ids, attention_mask, CONTINUATIONS, first_token_log_probs=True)
    frozen = model.frozen_continuation_states(input_ids, attention_mask, CONTINUATIONS)
    assert [[h.shape[0] for h in p.hidden] for p in frozen] == [[len(c) for c in g] for g in CONTINUATIONS]
    calls = count_frozen_runs(model)
    reused = model.score_continuations(
        input_ids, attention_mask, CONTINUATIONS, first_token_log_probs=True, frozen_states=frozen
    )
    assert calls and set(calls) == {"tuned"}  # the tuned branch alone, B rows
    for row, group in enumerate(CONTINUATIONS):
        for index in range(len(group)):
            torch.testing.assert_close(reused.log_probs[row][index], reference.log_probs[row][index], atol=1e-5, rtol=0)
            torch.testing.assert_close(
                reused.first_log_probs[row][index], reference.first_log_probs[row][index], atol=1e-5, rtol=0
            )
            if reference.frozen_weights[row][index] is not None:
                assert reused.frozen_weights[row][index] == pytest.approx(
                    reference.frozen_weights[row][index], abs=1e-6
                )
            assert reused.is_greedy[row][index] == reference.is_greedy[row][index]


def test_the_frozen_pass_runs_the_frozen_branch_alone():
    model = build("imsm")
    input_ids, attention_mask = random_batch(batch_size=2, length=6)
    calls = count_frozen_runs(model)
    model.frozen_continuation_states(input_ids, attention_mask, [[[5, 6]], [[7], [8, 9]]])
    assert set(calls) == {FROZEN}


def test_given_states_that_do_not_fit_or_would_decode_are_refused():
    model = build("imsm")
    input_ids, attention_mask = random_batch(batch_size=2, length=6)
    frozen = model.frozen_continuation_states(input_ids, attention_mask, [[[5, 6]], [[7]]])
    with pytest.raises(ValueError, match="one \\[L, d\\] tensor per continuation"):
        model.score_continuations(input_ids, attention_mask, [[[5]], [[7]]], frozen_states=frozen)
    with pytest.raises(ValueError, match="scoring only"):
        model.score_continuations(input_ids, attention_mask, [[[5, 6]], [[7]]], max_new_tokens=2, frozen_states=frozen)


def test_fusion_none_ignores_given_states_and_never_runs_the_frozen_branch():
    model = build("none")
    input_ids, attention_mask = random_batch(batch_size=2, length=6)
    reference = model.score_continuations(input_ids, attention_mask, [[[5, 6]], [[7]]])
    calls = count_frozen_runs(model)
    given = model.score_continuations(input_ids, attention_mask, [[[5, 6]], [[7]]], frozen_states=[None, None])
    assert set(calls) == {"tuned"}
    torch.testing.assert_close(given.log_probs[0][0], reference.log_probs[0][0])


# ---------------------------------------------------------------------------------------------
# Evaluation through a store on disk: multiple choice and drift, invalidation, damage, resume.


def _mc_task(tmp_path, rows=None, **overrides):
    from imsm.tasks import get_task
    from test_multiple_choice import SPEC_ROWS, write_spec

    return get_task(str(write_spec(tmp_path, rows or SPEC_ROWS, **overrides)))


def _drift_task(tmp_path):
    from imsm.tasks import get_task
    from test_drift import write_jsonl_spec

    return get_task(str(write_jsonl_spec(tmp_path, context="title")))


def evaluate(model, task, store=None, journal=None, batch_size=2):
    from imsm.data import load_examples
    from imsm.evaluation.run import evaluate_task
    from imsm.prompting import PromptFormatter

    formatter = PromptFormatter(tiny_tokenizer(), use_chat_template=False)
    return evaluate_task(
        model, formatter, task, load_examples(task), "test", batch_size=batch_size, progress=False,
        journal_path=journal, run_settings={"model": "tiny"}, frozen_states=store,
    )  # fmt: skip


def adapted(fusion: str, seed: int = 1, dtype=torch.float32):
    from test_drift import adapted as drift_adapted

    return drift_adapted(fusion, seed=seed).to(dtype)


def numbers(result) -> list:
    key = "log_likelihoods" if "log_likelihoods" in result.examples[0] else "kl"
    return [
        value for row in result.examples for value in (row[key] if key == "log_likelihoods" else [row[key], row["nll"]])
    ]


@pytest.mark.parametrize("kind", ["choice", "drift"])
@pytest.mark.parametrize("fusion", ["imsm", "no-query", "mean"])
def test_an_evaluation_reusing_a_store_equals_one_without(tmp_path, fusion, kind):
    task = _mc_task(tmp_path) if kind == "choice" else _drift_task(tmp_path)
    store = FrozenStateStore(tmp_path / "states")
    reference = evaluate(adapted(fusion), task)
    first = evaluate(adapted(fusion), task, store)  # builds the store
    other_adapter = adapted(fusion, seed=5)  # another cell of the study: same base model
    calls = count_frozen_runs(other_adapter)
    later = evaluate(other_adapter, task, store)
    assert FROZEN not in calls and "split" not in calls  # the frozen model never ran
    assert numbers(first) == pytest.approx(numbers(reference), abs=1e-5)
    assert numbers(later) == pytest.approx(numbers(evaluate(adapted(fusion, seed=5), task)), abs=1e-5)
    for name, value in reference.metrics.items():
        assert first.metrics[name] == pytest.approx(value, abs=1e-5, nan_ok=True), name


def test_a_cell_of_another_peft_method_reads_the_states_of_the_same_base_model(tmp_path):
    from peft import IA3Config

    from conftest import perturb_adapter, tiny_model
    from imsm import IMSMConfig, get_imsm_model

    task = _mc_task(tmp_path)
    store = FrozenStateStore(tmp_path / "states")
    evaluate(adapted("imsm"), task, store)  # an IMSM-LoRA cell builds the store
    # (IA)3 on its own layers (peft's defaults for Llama), which peft wraps where LoRA does not.
    targets = IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"])
    ia3 = get_imsm_model(tiny_model("llama"), targets, IMSMConfig(fusion="imsm"))
    perturb_adapter(ia3)
    reference = evaluate(ia3.eval(), task)
    calls = count_frozen_runs(ia3)
    reused = evaluate(ia3, task, store)
    assert FROZEN not in calls and "split" not in calls  # IMSM-(IA)3 never ran the frozen model
    assert len(store_files(tmp_path)) == 1
    assert numbers(reused) == pytest.approx(numbers(reference), abs=1e-5)


def test_fusion_none_never_builds_states_and_its_drift_reads_them(tmp_path):
    store = FrozenStateStore(tmp_path / "states")
    evaluate(adapted("none"), _mc_task(tmp_path), store)
    assert not (tmp_path / "states").exists()  # multiple choice under fusion none reads no frozen branch
    drift = _drift_task(tmp_path)
    reference = evaluate(adapted("none"), drift)
    evaluate(adapted("imsm"), drift, store)  # an IMSM cell built the base model's states
    model = adapted("none")
    calls = count_frozen_runs(model)
    reused = evaluate(model, drift, store)
    assert calls and set(calls) == {"tuned"}
    assert reused.metrics["drift_kl"] > 0 and numbers(reused) == pytest.approx(numbers(reference), abs=1e-5)


def store_files(tmp_path) -> list[Path]:
    return sorted((tmp_path / "states").glob("*/*.safetensors"))


def test_another_base_model_dtype_prompt_or_data_means_new_states(tmp_path):
    from imsm.evaluation.frozen_states import read_entries
    from test_multiple_choice import SPEC_ROWS

    store = FrozenStateStore(tmp_path / "states")
    task = _mc_task(tmp_path)
    evaluate(adapted("imsm"), task, store)
    [path] = store_files(tmp_path)
    entries = len(read_entries(path))
    calls = count_frozen_runs(model := adapted("imsm"))
    evaluate(model, task, store)
    assert FROZEN not in calls  # nothing changed: nothing recomputed
    # Another base model (its weights changed in one place): another directory.
    other = adapted("imsm")
    with torch.no_grad():
        other.causal_lm.model.layers[0].mlp.down_proj.base_layer.weight[0, 0] += 1e-3
    evaluate(other, task, store)
    assert len(store_files(tmp_path)) == 2
    # Another dtype: another directory again.
    evaluate(adapted("imsm", dtype=torch.float64), task, store)
    assert len(store_files(tmp_path)) == 3
    # Another prompt, or another data file: new entries, computed, beside the old ones.
    for changed in (_mc_task(tmp_path, prompt="Q: {q}"), _mc_task(tmp_path, rows=[{**SPEC_ROWS[0], "q": "w9 w9"}])):
        calls = count_frozen_runs(model := adapted("imsm"))
        evaluate(model, changed, store)
        assert FROZEN in calls
    assert len(read_entries(path)) > entries


@pytest.mark.parametrize("how", ["truncated", "zero-filled", "wrong format", "nan"])
def test_a_damaged_store_file_is_rebuilt_with_one_line(tmp_path, capsys, how):
    from conftest import damage

    store = FrozenStateStore(tmp_path / "states")
    task = _mc_task(tmp_path)
    reference = evaluate(adapted("imsm"), task, store)
    [path] = store_files(tmp_path)
    damage(path, how)
    capsys.readouterr()
    calls = count_frozen_runs(model := adapted("imsm"))
    again = evaluate(model, task, store)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "rebuilt" in err[0]
    assert FROZEN in calls and numbers(again) == pytest.approx(numbers(reference), abs=1e-6)
    evaluate(adapted("imsm"), task, store)
    assert capsys.readouterr().err == ""  # rebuilt whole


def test_a_store_with_inconsistent_tensors_is_not_trusted(tmp_path):
    from safetensors.torch import save_file

    from imsm.checked_files import DamagedFile
    from imsm.evaluation.frozen_states import read_entries

    path = tmp_path / "x.safetensors"
    tensors = {
        "keys": torch.zeros(2, 16, dtype=torch.uint8),
        "query": torch.zeros(2, 4),
        "counts": torch.tensor([1, 2]),
        "hidden": torch.zeros(2, 4),  # the counts say 3 rows
    }
    save_file(tensors, str(path))
    with pytest.raises(DamagedFile, match="inconsistent"):
        read_entries(path)


def test_two_writers_keep_each_others_entries(tmp_path):
    store = FrozenStateStore(tmp_path / "states")
    model = adapted("imsm")
    first, second = store.open(model, "t"), store.open(model, "t")
    first.add(b"a" * 16, torch.ones(4), torch.ones(2, 4))
    second.add(b"b" * 16, torch.zeros(4), torch.zeros(1, 4))
    first.save()
    second.save()  # merges what the first wrote
    assert len(store.open(model, "t")) == 2


def test_a_store_that_cannot_be_written_is_noted_and_the_evaluation_goes_on(tmp_path, capsys):
    (tmp_path / "file").write_text("not a directory")
    task = _mc_task(tmp_path)
    reference = evaluate(adapted("imsm"), task)
    result = evaluate(adapted("imsm"), task, FrozenStateStore(tmp_path / "file" / "states"))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not keep the frozen branch's states" in err[0]
    assert numbers(result) == pytest.approx(numbers(reference), abs=1e-5)


def test_a_resumed_evaluation_with_a_store_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    import imsm.evaluation.choice as evaluate_choice

    task = _mc_task(tmp_path)
    store = FrozenStateStore(tmp_path / "states")
    uninterrupted = evaluate(adapted("imsm"), task)
    from test_multiple_choice import killed_after_one_batch

    real = evaluate_choice.read_choices
    monkeypatch.setattr(evaluate_choice, "read_choices", killed_after_one_batch(real))
    journal = tmp_path / "run.mc.partial.jsonl"
    with pytest.raises(KeyboardInterrupt):
        evaluate(adapted("imsm"), task, store, journal)
    monkeypatch.setattr(evaluate_choice, "read_choices", real)
    resumed = evaluate(adapted("imsm"), task, store, journal)
    assert resumed.resumed_examples > 0
    assert numbers(resumed) == pytest.approx(numbers(uninterrupted), abs=1e-5)


def test_imsm_eval_frozen_states_end_to_end(tmp_path, capsys):
    import json

    from imsm.cli import main
    from test_drift import _eval, write_txt_spec
    from test_multiple_choice import write_spec

    adapted("imsm").save_pretrained(tmp_path / "adapter")
    tasks = f"{write_spec(tmp_path)},{write_txt_spec(tmp_path)}"
    store = tmp_path / "states"
    extra = ["--adapter", str(tmp_path / "adapter"), "--batch-size", "2", "--no-resume"]
    code, plain = _eval(tmp_path, tasks, *extra)
    assert code == 0
    expected = json.loads(plain.read_text())["tasks"]
    outputs = []
    for run in ("first", "second"):
        code, output = _eval(tmp_path, tasks, *extra, "--frozen-states", str(store))
        assert code == 0
        outputs.append(output.rename(output.with_name(f"{run}.json")))
    assert sorted(p.name for p in store.glob("*/*")) == ["mc.safetensors", "notes.safetensors"]
    for output in outputs:
        for name, summary in json.loads(output.read_text())["tasks"].items():
            for metric, value in summary["metrics"].items():
                assert value == pytest.approx(expected[name]["metrics"][metric], abs=1e-5, nan_ok=True)
    (tmp_path / "not-a-dir").write_text("x")
    assert (
        main(
            [
                "eval",
                "--model",
                "m",
                "--task",
                "mc",
                "--output",
                "o.json",
                "--frozen-states",
                str(tmp_path / "not-a-dir"),
            ]
        )
        == 2
    )
    assert "--frozen-states must name a directory" in capsys.readouterr().err


def _text_task(tmp_path):
    from imsm.tasks import get_task
    from test_no_generate import specs

    return get_task(str(specs.__wrapped__(tmp_path)["text"]))


def _teacher_forced(model, task, store=None):
    from imsm.data import load_examples
    from imsm.evaluation.run import evaluate_task
    from imsm.prompting import PromptFormatter

    formatter = PromptFormatter(tiny_tokenizer(), use_chat_template=False)
    result = evaluate_task(
        model, formatter, task, load_examples(task), "test", batch_size=2, progress=False,
        run_settings={"model": "tiny"}, frozen_states=store, generate=False,
    )  # fmt: skip
    # Each row's gold NLL and gate weight (rounded to 5 decimals in the rows, hence the tolerance below).
    return [value for row in result.examples for value in (row["gold_nll"], row.get("gate_frozen_weight"))]


@pytest.mark.parametrize("fusion", ["imsm", "no-query", "mean"])
def test_the_teacher_forced_pass_alone_reuses_the_store_and_equals_one_without(tmp_path, fusion):
    """A generated-answer task read without generation (GSM8K's gold NLL) scores like a multiple-choice
    option: the frozen branch's states come from the store, and the scores are the same."""
    task = _text_task(tmp_path)
    store = FrozenStateStore(tmp_path / "states")
    reference = _teacher_forced(adapted(fusion), task)
    first = _teacher_forced(adapted(fusion), task, store)  # builds the store
    assert [p.name for p in store_files(tmp_path)] == ["text.safetensors"]
    other_adapter = adapted(fusion, seed=5)
    calls = count_frozen_runs(other_adapter)
    later = _teacher_forced(other_adapter, task, store)
    assert calls and FROZEN not in calls and "split" not in calls  # the frozen model never ran
    assert first == pytest.approx(reference, abs=2e-5)
    assert later == pytest.approx(_teacher_forced(adapted(fusion, seed=5), task), abs=2e-5)


def test_generation_never_reads_the_store(tmp_path):
    """Decoding needs the frozen branch at every new token, so a generating pass leaves the store alone."""
    from imsm.data import load_examples
    from imsm.evaluation.run import evaluate_task
    from imsm.prompting import PromptFormatter

    task = _text_task(tmp_path)
    formatter = PromptFormatter(tiny_tokenizer(), use_chat_template=False)
    store = FrozenStateStore(tmp_path / "states")
    evaluate_task(
        adapted("imsm"), formatter, task, load_examples(task), "test", batch_size=2, progress=False,
        run_settings={"model": "tiny"}, frozen_states=store,
    )  # fmt: skip
    assert store_files(tmp_path) == []
