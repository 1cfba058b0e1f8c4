"""Drift from the base model on plain text (imsm.evaluation.drift): NLL and KL(base || model) per token."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

import imsm.evaluation.drift as drift_module
from conftest import peft_config, perturb_adapter, save_tiny_model, tiny_model, tiny_tokenizer
from imsm import IMSMConfig, IMSMModel, get_imsm_model
from imsm.cli import main
from imsm.data import load_examples
from imsm.evaluation.drift import encode_document, score_documents
from imsm.evaluation.run import evaluate_task, run_task
from imsm.prompting import PromptFormatter
from imsm.tasks import get_task

SHARED_DATA = Path(os.environ.get("IMSM_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
TOKENIZER = tiny_tokenizer()
DOCUMENTS = [  # (context, text): texts of different lengths, with and without a context
    ("", "w3 w4 w5 w6 w7 w8 w9"),
    ("w40 w41", "w10 w11 w12"),
    ("", "w13"),
    ("w50", "w14 w15 w16 w17 w18"),
]


def encoded(max_length: int = 128):
    return [encode_document(TOKENIZER, context, text, max_length) for context, text in DOCUMENTS]


def adapted(fusion: str = "none", perturb: bool = True, seed: int = 1) -> IMSMModel:
    model = get_imsm_model(tiny_model("llama"), peft_config("lora", "llama"), IMSMConfig(fusion=fusion))
    if perturb:
        perturb_adapter(model, seed=seed)
    return model.eval()


def base_model() -> IMSMModel:
    return IMSMModel(tiny_model("llama"), IMSMConfig(fusion="none")).eval()


def teacher_forced(logits_model, document):
    """(mean NLL, mean KL(base || model)) of the text tokens from full logits [T, V] of two models."""
    logits, base_logits = logits_model
    q, ids = document.query_length, torch.tensor(document.ids)
    log_p = torch.log_softmax(logits[q - 1 : -1].double(), -1)  # positions predicting the text
    log_base = torch.log_softmax(base_logits[q - 1 : -1].double(), -1)
    nll = -log_p.gather(-1, ids[q:, None]).mean()
    kl = (log_base.exp() * (log_base - log_p)).sum(-1).mean()
    return float(nll), float(kl)


def test_documents_are_the_prefix_token_then_context_then_text():
    first, second = encoded()[:2]
    assert first.ids == [1, 3, 4, 5, 6, 7, 8, 9] and first.query_length == 1 and not first.truncated
    assert second.ids == [1, 40, 41, 10, 11, 12] and second.query_length == 3
    cut = encode_document(TOKENIZER, "w40", "w3 w4 w5 w6", max_length=4)
    assert cut.ids == [1, 40, 3, 4] and cut.truncated


def test_nll_is_the_models_own_teacher_forced_loss_on_the_text():
    model = adapted("none")
    drifts = score_documents(model, encoded(), pad_id=0, batch_size=3)
    for document, drift in zip(encoded(), drifts, strict=True):
        input_ids = torch.tensor([document.ids])
        labels = input_ids.clone()
        labels[:, : document.query_length] = -100  # the prefix token and the context are given
        with torch.no_grad():
            expected = model(input_ids, labels=labels).loss
        assert drift.nll == pytest.approx(float(expected), abs=1e-5)
        assert drift.tokens == len(document.ids) - document.query_length and drift.frozen_weight is None
    # Batched with right padding, each document reads as it does alone.
    alone = score_documents(model, encoded(), pad_id=0, batch_size=1)
    assert [d.nll for d in alone] == pytest.approx([d.nll for d in drifts], abs=1e-5)
    assert [d.kl for d in alone] == pytest.approx([d.kl for d in drifts], abs=1e-6)


@pytest.mark.parametrize("fusion", ["none", "imsm"])
def test_kl_is_zero_for_a_fresh_adapter_and_positive_for_a_trained_one(fusion):
    fresh = score_documents(adapted(fusion, perturb=False), encoded(), pad_id=0)
    assert all(abs(d.kl) < 1e-6 for d in fresh)
    moved = score_documents(adapted(fusion), encoded(), pad_id=0)
    assert all(d.kl > 1e-4 for d in moved)
    # A fresh adapter reads the text as the base model does.
    base = score_documents(base_model(), encoded(), pad_id=0)
    assert [d.nll for d in fresh] == pytest.approx([d.nll for d in base], abs=1e-5)


def test_the_base_model_has_kl_zero_by_definition():
    drifts = score_documents(base_model(), encoded(), pad_id=0)
    assert all(d.kl == 0.0 and d.frozen_weight is None for d in drifts)


def test_kl_equals_a_hand_computation_from_the_base_and_the_merged_model():
    model = adapted("none")
    merged = copy.deepcopy(model.peft_model).merge_and_unload().eval()  # the adapter folded into a plain model
    base = tiny_model("llama")
    drifts = score_documents(model, encoded(), pad_id=0, batch_size=4)
    for document, drift in zip(encoded(), drifts, strict=True):
        input_ids = torch.tensor([document.ids])
        with torch.no_grad():
            logits = (merged(input_ids).logits[0], base(input_ids).logits[0])
        nll, kl = teacher_forced(logits, document)
        assert drift.nll == pytest.approx(nll, abs=1e-5) and drift.kl == pytest.approx(kl, abs=1e-5)


def test_imsm_kl_is_from_its_fused_distribution_and_differs_from_vanilla():
    imsm, vanilla = adapted("imsm"), adapted("none")
    with torch.no_grad():
        imsm.gate.W_B.normal_(std=3.0)  # a decisive gate: each feature mostly from one branch
    base = tiny_model("llama")
    drifts = score_documents(imsm, encoded(), pad_id=0, batch_size=4)
    for document, drift in zip(encoded(), drifts, strict=True):
        input_ids = torch.tensor([document.ids])
        query_mask = torch.arange(len(document.ids))[None, :] < document.query_length
        with torch.no_grad():
            logits = (imsm(input_ids, query_mask=query_mask).logits[0], base(input_ids).logits[0])
        nll, kl = teacher_forced(logits, document)
        assert drift.nll == pytest.approx(nll, abs=1e-5) and drift.kl == pytest.approx(kl, abs=1e-5)
        assert 0.0 < drift.frozen_weight < 1.0
    plain = score_documents(vanilla, encoded(), pad_id=0, batch_size=4)
    assert all(abs(a.kl - b.kl) > 1e-4 for a, b in zip(drifts, plain, strict=True))


def test_logits_are_built_a_slice_of_positions_at_a_time(monkeypatch):
    model = adapted("imsm")
    whole = score_documents(model, encoded(), pad_id=0, batch_size=4)
    calls = []
    real = model.fused_logits

    def counting(states, positions=None, gate=None):
        calls.append(len(positions[0]))
        return real(states, positions, gate)

    monkeypatch.setattr(model, "fused_logits", counting)
    monkeypatch.setattr(drift_module, "CHUNK_ELEMENTS", 3 * 96)  # three positions of the tiny vocabulary
    sliced = score_documents(model, encoded(), pad_id=0, batch_size=4)
    assert max(calls) == 3 and len(calls) > 2
    for a, b in zip(whole, sliced, strict=True):
        expected = pytest.approx((b.tokens, b.nll, b.kl, b.frozen_weight), abs=1e-6)
        assert (a.tokens, a.nll, a.kl, a.frozen_weight) == expected


# ---------------------------------------------------------------------------------------------
# Spec files, the CLI and the journal.


def write_jsonl_spec(tmp_path, **overrides):
    rows = [{"body": text, "title": context} for context, text in DOCUMENTS] + [{"body": "", "title": ""}]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"name": "docs", "answer_type": "drift", "data": "docs.jsonl", "text": "body", **overrides}
    path = tmp_path / "docs.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def write_txt_spec(tmp_path):
    (tmp_path / "notes.txt").write_text("w3 w4 w5\nw6 w7\n\n\n  \nw8 w9\n\nw10 w11 w12\n")
    path = tmp_path / "notes.yaml"
    path.write_text("name: notes\nanswer_type: drift\ndata: notes.txt\nmetrics: [drift_nll, drift_kl]\n")
    return path


def test_txt_documents_are_separated_by_blank_lines(tmp_path):
    task = get_task(str(write_txt_spec(tmp_path)))
    records = load_examples(task)
    assert [task.document(r) for r in records] == [("", "w3 w4 w5\nw6 w7"), ("", "w8 w9"), ("", "w10 w11 w12")]
    assert [r["_source"].rsplit(":", 1)[1] for r in records] == ["1", "6", "8"]


def test_a_jsonl_spec_reads_text_and_context_fields(tmp_path):
    task = get_task(str(write_jsonl_spec(tmp_path, context="title")))
    assert task.answer_type == "drift" and task.metrics == ("drift_nll", "drift_kl")
    assert task.document(load_examples(task)[1]) == DOCUMENTS[1]


def _eval(tmp_path, spec, *extra):
    model_dir = tmp_path / "model"
    if not model_dir.exists():
        save_tiny_model(model_dir)
    output = tmp_path / "out" / "drift.json"
    argv = ["eval", "--model", str(model_dir), "--task", str(spec), "--output", str(output), "--dtype", "fp32"]
    return main([*argv, *extra]), output


def test_eval_cli_on_a_jsonl_spec_writes_metrics_and_per_document_rows(tmp_path, capsys):
    code, output = _eval(tmp_path, write_jsonl_spec(tmp_path, context="title"), "--batch-size", "2")
    assert code == 0
    summary = json.loads(output.read_text())["tasks"]["docs"]
    metrics = summary["metrics"]
    rows = [json.loads(line) for line in output.with_name("drift.docs.jsonl").read_text().splitlines()]
    # The empty document is skipped; the other four are scored, the base model's KL is 0.
    assert summary["n"] == 4 and metrics["skipped_documents"] == 1 and metrics["truncated_documents"] == 0
    assert [row["index"] for row in rows] == [0, 1, 2, 3] and rows[1]["source"].endswith("docs.jsonl:2")
    assert metrics["tokens"] == sum(row["tokens"] for row in rows) == 7 + 3 + 1 + 5
    weighted = sum(row["nll"] * row["tokens"] for row in rows) / metrics["tokens"]
    assert metrics["drift_nll"] == pytest.approx(weighted, rel=1e-5) and metrics["drift_nll_stderr"] > 0
    assert metrics["drift_kl"] == 0.0 and all(row["kl"] == 0.0 for row in rows)
    assert "gate_frozen_weight" not in metrics and "drift_nll" in capsys.readouterr().out
    assert sorted(p.name for p in output.parent.iterdir()) == ["drift.docs.jsonl", "drift.json"]


def test_eval_cli_on_a_txt_spec_with_an_imsm_adapter(tmp_path):
    adapted("imsm").save_pretrained(tmp_path / "adapter")
    code, output = _eval(tmp_path, write_txt_spec(tmp_path), "--adapter", str(tmp_path / "adapter"))
    assert code == 0
    payload = json.loads(output.read_text())
    metrics = payload["tasks"]["notes"]["metrics"]
    assert payload["fusion"] == "imsm" and payload["tasks"]["notes"]["n"] == 3 and metrics["tokens"] == 5 + 2 + 3
    assert metrics["drift_kl"] > 0 and 0 < metrics["gate_frozen_weight"] < 1
    rows = [json.loads(line) for line in output.with_name("drift.notes.jsonl").read_text().splitlines()]
    assert all(row["kl"] > 0 and row["gate_frozen_weight"] is not None for row in rows)


def test_long_documents_are_cut_at_the_model_length_and_counted(tmp_path):
    task = get_task(str(write_jsonl_spec(tmp_path)))
    formatter = PromptFormatter(TOKENIZER, use_chat_template=False)
    kind = drift_module.Drift(base_model(), formatter, task, load_examples(task), max_length=4)
    result = run_task(kind, "test", progress=False)
    assert result.metrics["truncated_documents"] == 2  # the 7- and 5-token texts
    assert [row["tokens"] for row in result.examples] == [3, 3, 1, 3]


def _evaluate_with_journal(spec, journal, settings=None):
    task = get_task(str(spec))
    formatter = PromptFormatter(TOKENIZER, use_chat_template=False)
    return evaluate_task(
        adapted("imsm"), formatter, task, load_examples(task), "test", batch_size=2, progress=False,
        journal_path=journal, run_settings=settings or {"model": "tiny"},
    )  # fmt: skip


def test_an_interrupted_drift_evaluation_resumes_from_its_journal(tmp_path, monkeypatch):
    spec = write_jsonl_spec(tmp_path, context="title")
    journal = tmp_path / "run.docs.partial.jsonl"
    uninterrupted = _evaluate_with_journal(spec, tmp_path / "other.jsonl")
    real = drift_module.score_documents

    def killed_after_one_batch(model, documents, pad_id, batch_size, on_batch_done, *rest):
        def once(rows, drifts):
            on_batch_done(rows, drifts)
            raise KeyboardInterrupt

        return real(model, documents, pad_id, batch_size, once, *rest)

    monkeypatch.setattr(drift_module, "score_documents", killed_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        _evaluate_with_journal(spec, journal)
    scored = []

    def counting(model, documents, *rest):
        scored.extend(documents)
        return real(model, documents, *rest)

    monkeypatch.setattr(drift_module, "score_documents", counting)
    resumed = _evaluate_with_journal(spec, journal)
    assert len(scored) == 2 and resumed.resumed_examples == 2
    assert resumed.examples == uninterrupted.examples and resumed.metrics == pytest.approx(uninterrupted.metrics)
    scored.clear()
    assert _evaluate_with_journal(spec, journal).examples == uninterrupted.examples and not scored
    # A journal made under other settings (another model, adapter, dtype ...) is started afresh.
    other = _evaluate_with_journal(spec, journal, {"model": "tiny", "adapter": "bbbb"})
    assert len(scored) == 4 and other.resumed_examples == 0 and other.examples == uninterrupted.examples


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"text": None}, "a .jsonl drift spec needs 'text: FIELD'"),
        ({"data": "docs.csv"}, "must be a .jsonl or .txt file"),
        ({"metrics": ["drift_nll", "exact_match"]}, "metrics of answer_type drift are drift_nll and/or drift_kl"),
        ({"prompt": "{body}"}, "unknown key(s) ['prompt'] for answer_type drift"),
        ({"text": "missing"}, "docs.jsonl:1: record has no field 'missing'"),
        ({"context": "number"}, "docs.jsonl:1: field 'number' must be a string of text, got int"),
        ({"data": "nowhere.jsonl"}, "nowhere.jsonl' is missing"),
    ],
)
def test_bad_drift_specs_and_data_exit_2_in_one_line_and_write_nothing(tmp_path, capsys, overrides, message):
    spec = write_jsonl_spec(tmp_path, **{k: v for k, v in overrides.items() if v is not None})
    if overrides.get("text", "") is None:
        spec.write_text(yaml.safe_dump({k: v for k, v in yaml.safe_load(spec.read_text()).items() if k != "text"}))
    if "number" in overrides.values():
        (tmp_path / "docs.jsonl").write_text('{"body": "w3 w4", "number": 7}\n')
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["eval", "--task", str(spec), "--output", str(tmp_path / "out" / "results.json")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_txt_spec_takes_no_field_names(tmp_path, capsys):
    spec = write_txt_spec(tmp_path)
    spec.write_text(spec.read_text() + "text: body\n")
    assert main(["eval", "--task", str(spec), "--output", str(tmp_path / "r.json")]) == 2
    assert "a .txt data file holds the documents themselves; remove text" in capsys.readouterr().err


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared/data is not beside the checkout")
def test_sciq_support_scores_the_non_empty_support_paragraphs():
    task = get_task("sciq_support")
    records = load_examples(task, data_dir=SHARED_DATA)
    documents = [task.document(r) for r in records]
    assert len(records) == 1000 and sum(bool(text) for _, text in documents) == 884
    assert all(context == "" and text == text.strip() for context, text in documents)
