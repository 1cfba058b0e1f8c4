"""Evaluation end to end on a tiny model: generation, likelihood scores, files, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import peft_config, perturb_adapter, save_tiny_model, tiny_model, tiny_tokenizer
from imsm import IMSMConfig, IMSMModel, get_imsm_model
from imsm.cli import main
from imsm.evaluation.generation import answer_and_score, score_targets
from imsm.evaluation.run import evaluate_task
from imsm.generate import generate_answers
from imsm.prompting import PromptFormatter
from imsm.tasks import get_task


@pytest.fixture
def spec(tmp_path):
    rows = [{"q": f"w{3 + i} w{10 + i} w{20 + i}", "a": f"w{30 + i}", "yn": "yes" if i % 2 else "no"} for i in range(6)]
    (tmp_path / "probe.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "probe.yaml").write_text(
        "name: probe\ndata: probe.jsonl\nprompt: '{q}'\nanswer: a\n"
        "metrics: [exact_match, contains, token_f1, accuracy]\nmax_new_tokens: 3\n"
    )
    return tmp_path / "probe.yaml"


def imsm_model():
    model = get_imsm_model(tiny_model("llama"), peft_config("lora", "llama"), IMSMConfig())
    perturb_adapter(model)
    return model.eval()


def test_gold_nll_is_the_models_own_loss_on_the_target():
    model, tokenizer = imsm_model(), tiny_tokenizer()
    formatter = PromptFormatter(tokenizer, use_chat_template=False)
    prompts, targets = ["w3 w4 w5", "w7 w8"], ["w9 w10", "w11"]
    nll, margins, _ = score_targets(model, formatter, prompts, targets, batch_size=2)
    for prompt, target, value in zip(prompts, targets, nll, strict=True):
        prompt_ids, target_ids = formatter.prompt_ids(prompt), formatter.answer_ids(target)
        input_ids = torch.tensor([prompt_ids + target_ids])
        labels = torch.tensor([[-100] * len(prompt_ids) + target_ids])
        with torch.no_grad():
            expected = model(input_ids, labels=labels).loss
        assert value == pytest.approx(float(expected), abs=1e-5)
    assert margins == [None, None]


def test_gate_weight_on_the_frozen_branch_is_read_per_example():
    model, tokenizer = imsm_model(), tiny_tokenizer()
    formatter = PromptFormatter(tokenizer, use_chat_template=False)
    prompts, targets = ["w3 w4 w5 w6", "w7", "w8 w9"], ["w9 w10 w11", "w11", "w12 w13"]
    with torch.no_grad():
        model.gate.W_B.normal_(std=0.5)  # a gate that differs between positions and examples
    _, _, together = score_targets(model, formatter, prompts, targets, batch_size=3)
    _, _, alone = score_targets(model, formatter, prompts, targets, batch_size=1)
    # Batched with padding and in length order, each example still gets its own targets' gate.
    assert together == pytest.approx(alone, abs=1e-5)
    assert len(set(round(w, 4) for w in together)) == 3 and all(0 < w < 1 for w in together)
    with torch.no_grad():
        model.gate.W_B.zero_()  # sigmoid(0): both memories weighed equally everywhere
    _, _, even = score_targets(model, formatter, prompts, targets, batch_size=3)
    assert even == pytest.approx([0.5, 0.5, 0.5])
    vanilla = get_imsm_model(tiny_model("llama"), peft_config("lora", "llama"), IMSMConfig(fusion="none"))
    assert score_targets(vanilla.eval(), formatter, prompts, targets)[2] == [None, None, None]


@pytest.mark.parametrize("fusion", ["imsm", "no-query", "mean", "none"])
def test_one_pass_gives_the_separate_passes_answers_and_scores(fusion):
    model = get_imsm_model(tiny_model("llama"), peft_config("lora", "llama"), IMSMConfig(fusion=fusion))
    perturb_adapter(model)
    if model.gate is not None:
        torch.nn.init.normal_(model.gate.W_B, std=1.0)  # a gate that varies, so its weights are checked
    model.eval()
    formatter = PromptFormatter(tiny_tokenizer(), use_chat_template=False)
    # Prompts of several lengths (left padding), targets of one to four tokens (right padding).
    prompts = ["w3 w4 w5 w6 w7", "w8", "w9 w10 w11", "w12 w13", "w14 w15 w16 w17"]
    targets = ["w20 w21 w22 w23", "w24", "w25 w26", "w27", "w28 w29 w30"]
    outcomes = answer_and_score(model, formatter, prompts, targets, 6, 3, yes_no=True)
    answers = [o.prediction for o in outcomes]
    nll, margins, weights = (
        [getattr(o, key) for o in outcomes] for key in ("gold_nll", "yes_no_margin", "frozen_weight")
    )
    assert answers == generate_answers(model, formatter, prompts, 6, 3)
    expected_nll, expected_margins, expected_weights = score_targets(model, formatter, prompts, targets, 3, True)
    assert nll == pytest.approx(expected_nll, abs=1e-5)
    assert margins == pytest.approx(expected_margins, abs=1e-5)
    if model.gate is None:
        assert weights == expected_weights == [None] * 5
    else:
        assert weights == pytest.approx(expected_weights, abs=1e-5)


def test_yes_no_margin_is_the_first_token_log_odds():
    model, tokenizer = imsm_model(), tiny_tokenizer()
    formatter = PromptFormatter(tokenizer, use_chat_template=False)
    _, margins, _ = score_targets(model, formatter, ["w3 w4"], ["yes"], yes_no=True)
    # In the tiny vocabulary "yes" and "no" are both the unknown token, so the log-odds are 0.
    assert margins == [pytest.approx(0.0, abs=1e-6)]


def test_evaluate_task_reports_metrics_and_examples(spec):
    from imsm.data import load_examples

    model, task = imsm_model(), get_task(str(spec))
    formatter = PromptFormatter(tiny_tokenizer(), use_chat_template=False)
    result = evaluate_task(model, formatter, task, load_examples(task), "test", batch_size=4, progress=False)
    assert set(result.metrics) >= {
        "exact_match",
        "contains",
        "token_f1",
        "accuracy",
        "hit@5",
        "gold_nll",
        "answer_chars",
        "gate_frozen_weight",
    }
    weights = [e["gate_frozen_weight"] for e in result.examples]
    assert result.metrics["gate_frozen_weight"] == pytest.approx(sum(weights) / len(weights), abs=1e-4)
    assert len(result.examples) == 6 and all(0 <= result.metrics[m] <= 1 for m in ("exact_match", "contains"))
    expected = model.generate(torch.tensor([[3, 10, 20]]), max_new_tokens=3)[0, 3:]
    words = " ".join(f"w{int(i)}" for i in expected if int(i) > 2)
    assert result.examples[0]["prediction"] == words
    assert result.examples[0]["scores"]["exact_match"] == float(words == "w30")


def test_eval_cli_writes_metrics_and_per_example_files(capsys, spec, tmp_path):
    model_dir = save_tiny_model(tmp_path / "model")
    output = tmp_path / "out" / "zero.json"
    code = main(
        [
            "eval",
            "--model",
            str(model_dir),
            "--task",
            str(spec),
            "--output",
            str(output),
            "--dtype",
            "fp32",
            "--chat-template",
            "off",
            "--batch-size",
            "4",
        ]
    )
    assert code == 0
    payload = json.loads(output.read_text())
    assert payload["model"] == str(model_dir) and payload["adapter"] is None and payload["imsm_version"]
    assert payload["tasks"]["probe"]["n"] == 6 and payload["tasks"]["probe"]["version"] == "1"
    rows = [json.loads(line) for line in (tmp_path / "out" / "zero.probe.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {"prompt", "prediction", "golds", "scores", "gold_nll"} <= set(rows[0])
    assert "probe" in capsys.readouterr().out


def test_eval_cli_on_an_imsm_adapter(capsys, spec, tmp_path):
    model_dir = save_tiny_model(tmp_path / "model")
    model = imsm_model()
    model.save_pretrained(tmp_path / "adapter")
    output = tmp_path / "imsm.json"
    code = main(
        [
            "eval",
            "--model",
            str(model_dir),
            "--adapter",
            str(tmp_path / "adapter"),
            "--task",
            str(spec),
            "--output",
            str(output),
            "--dtype",
            "fp32",
            "--chat-template",
            "off",
            "--no-likelihood",
        ]
    )
    assert code == 0
    payload = json.loads(output.read_text())
    assert payload["fusion"] == "imsm" and "gold_nll" not in payload["tasks"]["probe"]["metrics"]
    loaded = IMSMModel.from_pretrained(tiny_model("llama"), tmp_path / "adapter")
    rows = [json.loads(line) for line in (tmp_path / "imsm.probe.jsonl").read_text().splitlines()]
    expected = loaded.generate(torch.tensor([[3, 10, 20]]), max_new_tokens=3)[0, 3:]
    assert rows[0]["prediction"] == " ".join(f"w{int(i)}" for i in expected if int(i) > 2)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--task", "gsm8"], "did you mean 'gsm8k'"),
        (["--task", "mrpc", "--data-dir", "/no/such/dir"], "data directory '/no/such/dir' does not exist"),
        (["--task", "mrpc", "--limit", "0"], "expected a positive integer"),
    ],
)
def test_eval_bad_input_exits_2_and_writes_nothing(capsys, tmp_path, extra, message):
    output = tmp_path / "never.json"
    try:
        code = main(["eval", "--output", str(output), *extra])
    except SystemExit as exit_:  # argparse's own type errors
        code = exit_.code
    assert code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def _evaluate_with_journal(spec, journal, settings=None):
    from imsm.data import load_examples

    task = get_task(str(spec))
    formatter = PromptFormatter(tiny_tokenizer(), use_chat_template=False)
    return evaluate_task(
        imsm_model(), formatter, task, load_examples(task), "test", batch_size=2, progress=False,
        journal_path=journal, run_settings=settings or {"model": "tiny"},
    )  # fmt: skip


def test_an_interrupted_evaluation_resumes_from_its_journal_with_identical_results(spec, tmp_path, monkeypatch):
    import imsm.evaluation.generation as evaluate_module

    journal = tmp_path / "run.probe.partial.jsonl"
    uninterrupted = _evaluate_with_journal(spec, tmp_path / "other.jsonl")
    real_pass = evaluate_module.answer_and_score

    def killed_after_one_batch(*args, **options):
        *arguments, on_batch_done = args

        def once(rows, outcomes):
            on_batch_done(rows, outcomes)
            raise KeyboardInterrupt  # the session ends mid-task

        return real_pass(*arguments, once, **options)

    monkeypatch.setattr(evaluate_module, "answer_and_score", killed_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        _evaluate_with_journal(spec, journal)
    with journal.open("a") as file:
        file.write('{"i": 5, "predic')  # a line cut short by the kill
    evaluated = []

    def counting(model, formatter, prompts, *rest, **options):
        evaluated.extend(prompts)
        return real_pass(model, formatter, prompts, *rest, **options)

    monkeypatch.setattr(evaluate_module, "answer_and_score", counting)
    resumed = _evaluate_with_journal(spec, journal)
    # The first batch (two examples) came from the journal; the other four ran in one pass.
    assert len(evaluated) == 4 and resumed.resumed_examples == 2
    assert resumed.examples == uninterrupted.examples
    assert resumed.metrics == pytest.approx(uninterrupted.metrics)
    assert resumed.summary()["resumed_examples"] == 2 and resumed.summary()["examples_per_s"] is None
    # The rows appended after the cut line are whole: a third run needs no model call at all.
    evaluated.clear()
    assert _evaluate_with_journal(spec, journal).examples == uninterrupted.examples
    assert not evaluated


def test_the_journal_holds_whole_examples_and_ignores_anything_less(spec, tmp_path):
    journal = tmp_path / "run.probe.partial.jsonl"
    complete = _evaluate_with_journal(spec, journal)
    header, *lines = journal.read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 6 and all(
        set(row) == {"i", "prediction", "gold_nll", "yes_no_margin", "frozen_weight"} for row in rows
    )
    # Half an example (an answer without its scores) counts as not evaluated.
    rows[0].pop("gold_nll")
    journal.write_text("".join(line + "\n" for line in [header, *map(json.dumps, rows)]))
    resumed = _evaluate_with_journal(spec, journal)
    assert resumed.resumed_examples == 5 and resumed.examples == complete.examples


def test_a_journal_from_other_settings_is_started_afresh(spec, tmp_path):
    journal = tmp_path / "run.probe.partial.jsonl"
    first = _evaluate_with_journal(spec, journal, {"model": "tiny", "adapter": "aaaa"})
    assert first.resumed_examples == 0 and len(journal.read_text().splitlines()) == 1 + 6  # header, examples
    again = _evaluate_with_journal(spec, journal, {"model": "tiny", "adapter": "aaaa"})
    assert again.resumed_examples == 6
    other = _evaluate_with_journal(spec, journal, {"model": "tiny", "adapter": "bbbb"})
    assert other.resumed_examples == 0 and other.examples == first.examples


def test_eval_cli_removes_its_journal_once_results_are_written(spec, tmp_path):
    model_dir = save_tiny_model(tmp_path / "model")
    output = tmp_path / "out" / "run.json"
    argv = ["eval", "--model", str(model_dir), "--task", str(spec), "--output", str(output), "--dtype", "fp32"]
    assert main([*argv, "--chat-template", "off"]) == 0
    assert sorted(p.name for p in output.parent.iterdir()) == ["run.json", "run.probe.jsonl"]
