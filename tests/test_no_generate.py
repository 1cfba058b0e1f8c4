"""Generated-answer tasks evaluated without generation: the teacher-forced pass alone (`imsm eval
--no-generate`, an experiment's `eval: {generate: false}` or `no_generate: [...]`), on a tiny model."""

from __future__ import annotations

import json

import pytest

from conftest import peft_config, perturb_adapter, save_tiny_model, tiny_model, tiny_tokenizer
from imsm import IMSMConfig, IMSMError, get_imsm_model
from imsm.cli import main
from imsm.data import load_examples
from imsm.evaluation.generation import Generation
from imsm.evaluation.run import evaluate_task
from imsm.experiment import runner
from imsm.experiment.questions import question_columns
from imsm.experiment.spec import load_experiment
from imsm.model.siamese import IMSMModel
from imsm.prompting import PromptFormatter
from imsm.tasks import get_task


@pytest.fixture
def specs(tmp_path):
    """A text task and a yes/no task over the tiny vocabulary, as custom spec files."""
    rows = [
        {"q": f"w{3 + i} w{10 + i} w{20 + i}", "a": f"w{30 + i} w{40 + i}", "yn": ["no", "yes"][i % 2]}
        for i in range(6)
    ]
    (tmp_path / "probe.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "text.yaml").write_text(
        "name: text\ndata: probe.jsonl\nprompt: '{q}'\nanswer: a\nmetrics: [exact_match, contains]\nmax_new_tokens: 3\n"
    )
    (tmp_path / "yesno.yaml").write_text(
        "name: yesno\ndata: probe.jsonl\nprompt: '{q}'\nanswer: yn\nanswer_type: yes_no\nmetrics: [accuracy, f1]\n"
        "max_new_tokens: 2\n"
    )
    return {"text": tmp_path / "text.yaml", "yes_no": tmp_path / "yesno.yaml"}


def imsm_model():
    model = get_imsm_model(tiny_model("llama"), peft_config("lora", "llama"), IMSMConfig())
    perturb_adapter(model)
    return model.eval()


def evaluate(spec, generate: bool, **options):
    task = get_task(str(spec))
    formatter = PromptFormatter(tiny_tokenizer(), use_chat_template=False)
    return evaluate_task(
        imsm_model(), formatter, task, load_examples(task), "test", batch_size=4, progress=False, generate=generate,
        **options,
    )  # fmt: skip


def refuse_to_decode(monkeypatch):
    """Any decoding from here on fails the test: `generate`, and the decoding after a scoring prefill."""

    def decoding(*args, **kwargs):
        raise AssertionError("an evaluation without generation decoded")

    monkeypatch.setattr("imsm.model.decode._decode", decoding)
    monkeypatch.setattr(IMSMModel, "generate", decoding)


@pytest.mark.parametrize("kind", ["text", "yes_no"])
def test_without_generation_the_likelihood_pass_alone_gives_the_same_scores(specs, kind, monkeypatch):
    generated = evaluate(specs[kind], generate=True)
    refuse_to_decode(monkeypatch)
    scored = evaluate(specs[kind], generate=False)
    # The teacher-forced scores are those of the pass that generates as well, example by example.
    for name in ("gold_nll", "yes_no_margin", "gate_frozen_weight"):
        assert [row[name] for row in scored.examples] == pytest.approx([row[name] for row in generated.examples])
    assert all(row["gold_nll"] is not None for row in scored.examples)
    # Only scores that exist without answers: no accuracy of empty answers, no answer length.
    teacher_forced = {"gold_nll", "gate_frozen_weight"} | (
        {"gold_yes_rate", "yes_no_auc", "yes_no_margin"} if kind == "yes_no" else set()
    )
    assert set(scored.metrics) == teacher_forced
    assert {name: scored.metrics[name] for name in teacher_forced} == pytest.approx(
        {name: generated.metrics[name] for name in teacher_forced}
    )
    assert {"exact_match", "accuracy", "answer_chars"} & set(scored.metrics) == set()
    assert all(row["prediction"] is None and row["scores"] == {} for row in scored.examples)
    # The result says so, and its per-question columns hold the likelihood scores alone.
    assert scored.summary()["generated"] is False and "generated" not in generated.summary()
    columns = question_columns(scored.examples)
    assert "gold_nll" in columns and "answer_chars" not in columns and "exact_match" not in columns


def test_a_journal_of_the_likelihood_pass_resumes_and_is_not_mistaken_for_a_generating_one(specs, tmp_path):
    journal = tmp_path / "run.text.partial.jsonl"
    settings = {"journal_path": journal, "run_settings": {"model": "tiny"}}
    first = evaluate(specs["text"], generate=False, **settings)
    rows = [json.loads(line) for line in journal.read_text().splitlines()[1:]]
    assert len(rows) == 6 and all(row["prediction"] is None and row["gold_nll"] is not None for row in rows)
    again = evaluate(specs["text"], generate=False, **settings)
    assert again.resumed_examples == 6 and again.examples == first.examples
    generating = evaluate(specs["text"], generate=True, **settings)  # another fingerprint: started afresh
    assert generating.resumed_examples == 0 and all(isinstance(r["prediction"], str) for r in generating.examples)


def test_the_generating_journals_fingerprint_is_unchanged(specs):
    task = get_task(str(specs["text"]))
    formatter = PromptFormatter(tiny_tokenizer(), use_chat_template=False)
    kind = Generation(imsm_model(), formatter, task, load_examples(task))
    # What it was before evaluation could skip generation: journals of runs under way stay valid.
    assert kind.journal_key()[0] == {"max_new_tokens": 3, "likelihood": True}


def test_without_generation_and_without_likelihood_nothing_is_evaluated(specs):
    with pytest.raises(IMSMError, match="nothing is evaluated"):
        evaluate(specs["text"], generate=False, likelihood=False)


def test_a_multiple_choice_task_never_generates_whatever_generate_says(tmp_path):
    rows = [{"q": f"w{3 + i}", "options": [f"w{10 + i}", f"w{20 + i}"], "gold": i % 2} for i in range(4)]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "mc.yaml").write_text(
        "name: mc\ndata: mc.jsonl\nprompt: '{q}'\nanswer_type: multiple_choice\nchoices: options\nanswer: gold\n"
    )
    on, off = (evaluate(tmp_path / "mc.yaml", generate=g) for g in (True, False))
    assert on.metrics == off.metrics and "generated" not in off.summary()


def eval_argv(model_dir, spec, output, *extra) -> list[str]:
    return [
        "eval", "--model", str(model_dir), "--task", str(spec), "--output", str(output), "--dtype", "fp32",
        "--chat-template", "off", *extra,
    ]  # fmt: skip


def test_eval_cli_no_generate_writes_gold_nll_only_and_says_so(specs, tmp_path, monkeypatch):
    model_dir = save_tiny_model(tmp_path / "model")
    output = tmp_path / "out" / "nll.json"
    refuse_to_decode(monkeypatch)
    assert main(eval_argv(model_dir, specs["text"], output, "--no-generate")) == 0
    payload = json.loads(output.read_text())
    assert payload["generate"] is False and payload["likelihood"] is True
    summary = payload["tasks"]["text"]
    assert summary["generated"] is False and set(summary["metrics"]) == {"gold_nll"}
    rows = [json.loads(line) for line in (tmp_path / "out" / "nll.text.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(row["prediction"] is None and row["gold_nll"] > 0 for row in rows)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--no-likelihood"], "--no-generate leaves only the teacher-forced pass, which --no-likelihood turns off"),
        (["--max-new-tokens", "4"], "--max-new-tokens caps generated answers, and --no-generate generates none"),
    ],
)
def test_eval_cli_refuses_no_generate_with_what_contradicts_it(specs, tmp_path, capsys, extra, message):
    output = tmp_path / "never.json"
    assert main(eval_argv(tmp_path / "no-model", specs["text"], output, "--no-generate", *extra)) == 2
    assert message in capsys.readouterr().err and not output.exists()


def write_experiment(tmp_path, spec, **changes) -> str:
    config = {
        "name": "nll",
        "results": str(tmp_path / "results"),
        "work": str(tmp_path / "work"),
        "eval": {"limit": 4, "batch_size": 4},
        "grids": {"main": {"task": ["gsm8k"], "fusion": ["none"], "evaluate": ["target", str(spec), "arc_easy"]}},
        **changes,
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return str(path)


def test_the_experiments_eval_section_skips_generation_per_task_or_for_all(specs, tmp_path):
    text = str(specs["text"])
    experiment = load_experiment(write_experiment(tmp_path, text, eval={"no_generate": ["gsm8k"]}))
    assert [experiment.eval_options.generates(t) for t in ("gsm8k", text)] == [False, True]
    experiment = load_experiment(write_experiment(tmp_path, text, eval={"generate": False}))
    assert [experiment.eval_options.generates(t) for t in ("gsm8k", text)] == [False, False]
    assert load_experiment(write_experiment(tmp_path, text)).eval_options.generates("gsm8k")


@pytest.mark.parametrize(
    "eval_settings, message",
    [
        ({"no_generate": ["gsm8"]}, r"eval.no_generate: unknown task 'gsm8': did you mean 'gsm8k'"),
        ({"no_generate": ["arc_easy"]}, r"eval.no_generate: arc_easy is a multiple_choice task, which never generates"),
        ({"no_generate": "gsm8k"}, r"eval: no_generate must list task names, e.g. \[gsm8k\], got 'gsm8k'"),
        ({"generate": False, "likelihood": False}, r"eval: a task evaluated without generation has only the"),
        ({"no_generate": ["gsm8k"], "likelihood": False}, r"which likelihood: false turns off"),
    ],
)
def test_bad_generation_settings_are_refused_with_the_field_and_the_fix(specs, tmp_path, eval_settings, message):
    with pytest.raises(IMSMError, match=message):
        load_experiment(write_experiment(tmp_path, specs["text"], eval=eval_settings))


def test_a_cell_evaluated_without_generation_keeps_gold_nll_and_says_so(specs, tmp_path, monkeypatch):
    text = str(specs["text"])
    experiment = load_experiment(write_experiment(tmp_path, text, eval={"limit": 4, "no_generate": [text]}))
    refuse_to_decode(monkeypatch)
    journal = tmp_path / "work" / "cell" / "eval.text.partial.jsonl"
    summary = runner._evaluate(experiment, imsm_model(), tiny_tokenizer(), text, None, journal, {"cell": "c"})
    assert summary["generated"] is False and set(summary["metrics"]) == {"gold_nll", "gate_frozen_weight"}
    assert set(summary["questions"]) == {"index", "gold_nll", "gate_frozen_weight"}
    assert len(summary["questions"]["index"]) == 4
    rows = [json.loads(line) for line in journal.with_name("eval.text.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(row["prediction"] is None for row in rows)


def test_experiment_json_records_the_eval_section_as_written(specs, tmp_path):
    experiment = load_experiment(write_experiment(tmp_path, specs["text"], eval={"no_generate": ["gsm8k"]}))
    assert experiment.shared_settings()["eval"] == {"no_generate": ["gsm8k"]}
