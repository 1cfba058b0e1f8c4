"""Multiple-choice tasks: lm-eval's prompts and gold, acc / acc_norm, the query memory, spec files, resume."""

from __future__ import annotations

import json
import math
import re
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from conftest import peft_config, perturb_adapter, save_tiny_model, tiny_model, tiny_tokenizer
from imsm import IMSMConfig, get_imsm_model
from imsm.cli import main
from imsm.data import load_examples
from imsm.errors import IMSMError
from imsm.evaluation.choice import ChoiceReading, choice_metrics, read_choices
from imsm.evaluation.run import evaluate_task
from imsm.evaluation.scoring import encode_pair
from imsm.experiment.questions import question_columns
from imsm.metrics import (
    METRICS,
    choice_accuracy,
    choice_accuracy_norm,
    choice_probability,
    mean_stderr,
)
from imsm.prompting import PromptFormatter
from imsm.tasks import TASKS, get_task
from imsm.tasks.choice import multiple_choice_task

# A few rows per task in the data directory's real format (shared/data), with its oddities: ARC's
# digit labels and 3 or 5 options, PIQA's one-word goal and trailing / double spaces, SciQ's empty
# support and its row whose gold equals a distractor (line 719), WinoGrande's string answer.
ROWS = {
    "arc_easy/test.jsonl": [
        {"id": "NYSEDREGENTS_2015_8_26", "question": "Earth's hydrosphere is a layer of",
         "choices": {"text": ["rock", "air", "lava", "water"], "label": ["1", "2", "3", "4"]}, "answerKey": "4"},
        {"id": "NYSEDREGENTS_2010_4_23", "question": "A male puppy inherits traits from",
         "choices": {"text": ["both parents", "its mother, only", "its father, only"], "label": ["A", "B", "C"]},
         "answerKey": "A"},
    ],
    "arc_challenge/test.jsonl": [
        {"id": "TIMSS_1995_8_N4", "question": "What did the decaying fish probably supply to the plants?",
         "choices": {"text": ["energy", "minerals", "protein", "oxygen", "water"],
                     "label": ["A", "B", "C", "D", "E"]}, "answerKey": "B"},
    ],
    "piqa/validation.jsonl": [
        {"goal": "dresser", "sol1": "replace drawer with bobby pin ", "sol2": "finish, woodgrain with  bobby pin ",
         "label": 1},
        {"goal": "How do I ready a guinea pig cage?", "sol1": "Use paper strips.", "sol2": "Use jeans.", "label": 0},
    ],
    "sciq/test.jsonl": [
        {"question": "When liquid water changes to water vapor it is called?", "distractor3": "evaporation",
         "distractor1": "absorption", "distractor2": "transpiration", "correct_answer": "evaporation", "support": ""},
        {"question": "Which kind of muscle regulates air flow in lungs?", "distractor3": "alveoli",
         "distractor1": "vascular", "distractor2": "striated", "correct_answer": "smooth",
         "support": " \nSmooth muscle regulates air flow in lungs."},
    ],
    "winogrande/dev.jsonl": [
        {"qID": "31MCUE39BKKZ91DJGJI85XT0XI6G3G-1",
         "sentence": "The man used  his eyes to read the letters but the _ were too small.",
         "option1": "letters", "option2": "eyes", "answer": "1"},
        {"qID": "3FCO4VKOZ4BJQ6IFC0VAIBK4KTWE7U-2",
         "sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
         "option1": "Sarah", "option2": "Maria", "answer": "2"},
    ],
}  # fmt: skip
TASK_FILES = {
    "arc_easy": "arc_easy/test.jsonl",
    "arc_challenge": "arc_challenge/test.jsonl",
    "piqa": "piqa/validation.jsonl",
    "sciq": "sciq/test.jsonl",
    "winogrande": "winogrande/dev.jsonl",
}
LM_EVAL_YAML = {
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "piqa": "piqa/piqa.yaml",
    "sciq": "sciq/sciq.yaml",
    "winogrande": "winogrande/default.yaml",
}


@pytest.fixture
def data_dir(tmp_path):
    for name, rows in ROWS.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def _records(name, data_dir):
    return load_examples(get_task(name), data_dir=data_dir)


# ---------------------------------------------------------------------------------------------
# The registry tasks build lm-eval 0.4.13's requests.


def test_the_five_probes_are_registered_as_multiple_choice():
    for name in TASK_FILES:
        task = TASKS.get(name)
        assert task.answer_type == "multiple_choice" and task.train_split is None and task.hub is not None
        assert task.metrics == (("accuracy",) if name == "winogrande" else ("accuracy", "accuracy_norm"))


def test_requests_follow_lm_evals_yamls(data_dir):
    """Hand-written from lm-eval 0.4.13's YAMLs (tasks/arc/arc_easy.yaml, piqa/piqa.yaml,
    sciq/sciq.yaml, winogrande/preprocess_winogrande.py)."""
    arc = _records("arc_easy", data_dir)
    assert get_task("arc_easy").requests(arc[0]) == [
        ("Question: Earth's hydrosphere is a layer of\nAnswer:", " " + option)
        for option in ("rock", "air", "lava", "water")
    ]
    assert [get_task("arc_easy").gold_index(r) for r in arc] == [3, 0]  # digit labels: "4" is the fourth
    assert get_task("arc_challenge").gold_index(_records("arc_challenge", data_dir)[0]) == 1
    piqa = _records("piqa", data_dir)
    assert get_task("piqa").requests(piqa[0]) == [
        ("Question: dresser\nAnswer:", " replace drawer with bobby pin "),
        ("Question: dresser\nAnswer:", " finish, woodgrain with  bobby pin "),
    ]
    sciq = get_task("sciq")
    empty, lstripped = _records("sciq", data_dir)
    assert sciq.requests(empty)[0] == (
        "\nQuestion: When liquid water changes to water vapor it is called?\nAnswer:",
        " absorption",
    )
    assert sciq.choices(empty) == ["absorption", "transpiration", "evaporation", "evaporation"]
    assert sciq.gold_index(empty) == 3 and sciq.requests(lstripped)[0][0].startswith("Smooth muscle regulates")
    winogrande = get_task("winogrande")
    first = _records("winogrande", data_dir)[0]
    assert winogrande.requests(first) == [
        ("The man used  his eyes to read the letters but the letters", " were too small."),
        ("The man used  his eyes to read the letters but the eyes", " were too small."),
    ]
    assert winogrande.gold_index(first) == 0 and winogrande.choices(first) == ["letters", "eyes"]
    assert winogrande.prompt(first).endswith("the letters") and winogrande.target(first) == "were too small."


@pytest.mark.parametrize("name", list(TASK_FILES))
def test_requests_and_gold_equal_lm_evals_own_task(name, data_dir, tmp_path, monkeypatch):
    """lm-eval's own Task, built from its YAML over the same rows read as local JSON."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    config = dict(load_yaml(Path(lm_eval.__file__).parent / "tasks" / LM_EVAL_YAML[name], resolve_func=True))
    files = {"test": str(data_dir / TASK_FILES[name])}
    config.update(
        dataset_path="json",
        dataset_name=None,
        dataset_kwargs={"data_files": files, "cache_dir": str(tmp_path / "cache")},
        test_split="test",
        validation_split=None,
        training_split=None,
    )
    theirs = ConfigurableTask(config=config)
    ours = get_task(name)
    records = _records(name, data_dir)
    for doc, record in zip(theirs.eval_docs, records, strict=True):
        requests = [instance.arguments for instance in theirs.construct_requests(doc, theirs.fewshot_context(doc, 0))]
        assert ours.requests(record) == requests
        gold = theirs.doc_to_text(doc) if theirs.multiple_input else theirs.doc_to_target(doc)
        assert ours.gold_index(record) == gold
        if not theirs.multiple_input:  # WinoGrande's doc_to_choice holds the contexts, ours the options
            assert ours.choices(record) == theirs.doc_to_choice(doc)


# Rows as the hub's copies hold them (allenai/ai2_arc, baber/piqa, allenai/sciq, allenai/winogrande).
HUB_ROWS = {
    "allenai/ai2_arc": {key: ROWS["arc_easy/test.jsonl"][0][key] for key in ("id", "question", "choices", "answerKey")},
    "baber/piqa": {"goal": "dresser", "sol1": "a", "sol2": "b", "label": 1},
    "allenai/sciq": {**ROWS["sciq/test.jsonl"][1]},
    "allenai/winogrande": {
        key: ROWS["winogrande/dev.jsonl"][1][key] for key in ("sentence", "option1", "option2", "answer")
    },
}


@pytest.mark.parametrize(
    "name, gold", [("arc_easy", 3), ("arc_challenge", 3), ("piqa", 1), ("sciq", 3), ("winogrande", 1)]
)
def test_hub_rows_are_converted_to_the_data_files_format(monkeypatch, name, gold):
    asked = []

    def load_dataset(path, config, split):
        asked.append((path, config, split))
        return [dict(HUB_ROWS[path])]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.delenv("IMSM_DATA_DIR", raising=False)
    task = get_task(name)
    (record,) = load_examples(task)
    assert task.gold_index(record) == gold and len(task.requests(record)) == len(task.choices(record))
    assert asked == [(task.hub.path, task.hub.name, task.hub.splits[task.eval_split])]


def test_a_record_without_a_gold_option_is_reported_with_file_and_line(data_dir):
    path = data_dir / "arc_easy" / "test.jsonl"
    row = {**ROWS["arc_easy/test.jsonl"][0], "answerKey": "E"}
    path.write_text(path.read_text() + json.dumps(row) + "\n")
    with pytest.raises(IMSMError, match=rf"{path}:3: task arc_easy cannot read the options or the gold"):
        load_examples(get_task("arc_easy"), data_dir=data_dir)


# ---------------------------------------------------------------------------------------------
# Scoring: acc, acc_norm, ties, standard errors, the gold option's probability.


def test_accuracy_norm_and_ties_on_hand_computed_log_likelihoods():
    # acc: the most likely option; acc_norm: the most likely per character of the option's text.
    assert choice_accuracy([-4.0, -6.0], [2, 6], 0) == 1.0
    assert choice_accuracy_norm([-4.0, -6.0], [2, 6], 1) == 1.0  # -2 per char against -1
    # Ties go to the first option (numpy's argmax, as lm-eval): SciQ's rows whose gold repeats a
    # distractor are then wrong.
    assert choice_accuracy([-1.0, -1.0, -3.0], [1, 1, 1], 1) == 0.0
    assert choice_accuracy([-1.0, -1.0, -3.0], [1, 1, 1], 0) == 1.0
    assert choice_accuracy_norm([-2.0, -4.0], [1, 2], 0) == 1.0
    # Characters, not UTF-8 bytes (lm-eval 0.4.13 divides by len(option)): "é" is one character
    # and two bytes, so per character "abc" wins (-1.03 against -2.0), per byte "é" would (-1.0).
    lengths = [len(option) for option in ("é", "abc")]
    assert lengths == [1, 3] and choice_accuracy_norm([-2.0, -3.1], lengths, 1) == 1.0


def test_gold_probability_is_the_softmax_and_a_uniform_shift_cannot_move_it():
    lls = [-1.0, -2.0, -3.0]
    expected = math.exp(-2.0) / sum(math.exp(v) for v in lls)
    assert choice_probability(lls, 1) == pytest.approx(expected)
    assert choice_probability([v - 40.0 for v in lls], 1) == pytest.approx(expected)
    assert choice_probability([-1000.0, -1001.0], 0) == pytest.approx(1 / (1 + math.exp(-1)))  # no underflow


def test_task_metrics_with_standard_errors():
    task = multiple_choice_task(
        name="hand", context=lambda r: "", choices=lambda r: ["a", "bb"], gold=lambda r: 0,
        version="1", directory="/", splits={"test": ("x.jsonl",)}, eval_split="test", required_fields=(),
    )  # fmt: skip
    readings = [
        ChoiceReading([-1.0, -3.0], [True, False], [1, 2], [0.2, 0.5]),  # right, right norm (-1 vs -1.5)
        ChoiceReading([-3.0, -1.0], [False, True], [1, 1], [0.4, 0.4]),  # wrong
        ChoiceReading([-2.0, -2.0], [True, True], [1, 1], [0.5, 0.5]),  # tie: first = right
        ChoiceReading([-1.5, -2.5], [True, False], [1, 1], [0.5, 0.5]),  # right; norm -1.5 vs -1.25: wrong
    ]
    metrics, per_question = choice_metrics(task, [0, 0, 0, 0], [[1, 2]] * 4, readings)
    assert per_question == {"accuracy": [1.0, 0.0, 1.0, 1.0], "accuracy_norm": [1.0, 0.0, 0.0, 0.0]}
    assert metrics["accuracy"] == 0.75 and metrics["accuracy_norm"] == 0.25
    # Sample std / sqrt(n), as lm-eval's mean_stderr: acc 0.5 / 2, acc_norm 0.5 / 2.
    assert metrics["accuracy_stderr"] == pytest.approx(0.25) and metrics["accuracy_norm_stderr"] == pytest.approx(0.25)
    assert metrics["gold_log_likelihood"] == pytest.approx((-1 - 3 - 2 - 1.5) / 4)
    assert metrics["gold_probability"] == pytest.approx(
        sum(choice_probability(r.log_likelihoods, 0) for r in readings) / 4
    )
    # The gate's weight is averaged over every option's tokens: (0.2 + 2 * 0.5) / 3 for the first.
    assert readings[0].frozen_weight() == pytest.approx(0.4)
    assert metrics["gate_frozen_weight"] == pytest.approx((0.4 + 0.4 + 0.5 + 0.5) / 4)
    assert math.isnan(mean_stderr([1.0]))


def test_metrics_of_one_kind_of_task_are_refused_for_the_other():
    assert METRICS.get("accuracy").applies_to("multiple_choice") and METRICS.get("accuracy").applies_to("text")
    assert METRICS.get("accuracy_norm").applies_to("multiple_choice")
    assert not METRICS.get("accuracy_norm").applies_to("text")
    for name in ("exact_match", "contains", "hit@5", "token_f1", "f1", "mcc"):
        assert not METRICS.get(name).applies_to("multiple_choice"), name


# ---------------------------------------------------------------------------------------------
# The model's reading: the context is the query memory, each option is read alone.


def gated_model():
    model = get_imsm_model(tiny_model("llama"), peft_config("lora", "llama"), IMSMConfig())
    perturb_adapter(model)
    return model.eval()


def _formatter():
    return PromptFormatter(tiny_tokenizer(), use_chat_template=False)


def _teacher_forced(model, context_ids, option_ids, query_mask=None):
    """The option's log-likelihood from one forward over context + option, query = the context
    unless `query_mask` says otherwise."""
    input_ids = torch.tensor([context_ids + option_ids])
    if query_mask is None:
        query_mask = torch.zeros_like(input_ids, dtype=torch.bool)
        query_mask[0, : len(context_ids)] = True
    with torch.no_grad():
        logits = model(input_ids, query_mask=query_mask).logits[0, len(context_ids) - 1 : -1]
    return float(torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(option_ids)[:, None]).sum())


def test_an_options_score_is_the_teacher_forced_reading_with_the_context_as_query():
    model, formatter = gated_model(), _formatter()
    context, options = "w3 w10 w20 w7", [" w30", " w40 w5"]
    (reading,) = read_choices(model, formatter, [[(context, o) for o in options]])
    for option, log_likelihood in zip(options, reading.log_likelihoods, strict=True):
        context_ids, option_ids = encode_pair(formatter.tokenizer, context, option)
        assert log_likelihood == pytest.approx(_teacher_forced(model, context_ids, option_ids), abs=1e-4)
        # The query matters: with the option in it the gate reads another memory.
        everything = torch.ones(1, len(context_ids) + len(option_ids), dtype=torch.bool)
        assert log_likelihood != pytest.approx(_teacher_forced(model, context_ids, option_ids, everything), abs=1e-4)


def test_adding_an_option_or_other_questions_leaves_a_questions_scores_alone():
    model, formatter = gated_model(), _formatter()
    question = [("w3 w10 w20", " w30"), ("w3 w10 w20", " w40 w5")]
    (alone,) = read_choices(model, formatter, [question])
    (more,) = read_choices(model, formatter, [[*question, ("w3 w10 w20", " w50 w6 w7 w8")]])
    assert more.log_likelihoods[:2] == pytest.approx(alone.log_likelihoods, abs=1e-5)
    others = [[("w5 w6", " w9")], [("w4 w8 w9 w11 w12 w13 w14", " w15 w16")]]
    batched = read_choices(model, formatter, [*others, question], batch_size=3)[-1]  # padded beside longer ones
    assert batched.log_likelihoods == pytest.approx(alone.log_likelihoods, abs=1e-5)
    assert alone.tokens == [1, 2] and all(w is not None for w in alone.frozen_weights)


def test_without_a_gate_there_is_no_gate_weight():
    model = get_imsm_model(tiny_model("llama"), peft_config("lora", "llama"), IMSMConfig(fusion="none")).eval()
    (reading,) = read_choices(model, _formatter(), [[("w3 w4", " w5"), ("w3 w4", " w6")]])
    assert reading.frozen_weight() is None


def test_auto_chat_template_means_none_for_multiple_choice_only():
    assert get_task("arc_easy").chat_template_setting("auto") == "off"
    assert get_task("arc_easy").chat_template_setting("on") == "on"
    assert get_task("webq").chat_template_setting("auto") == "auto"


# ---------------------------------------------------------------------------------------------
# Spec files, `imsm eval` end to end, bad specs, resume.

SPEC_ROWS = [
    {"q": "w3 w10", "options": ["w30", "w40 w5", "w50"], "gold": 0},
    {"q": "w4 w11 w12", "options": ["w31", "w41"], "gold": "w41"},
    {"q": "w5", "options": ["w32", "w42", "w52 w6"], "gold": 2},
    {"q": "w6 w13", "options": ["w33", "w43"], "gold": "w33"},
    {"q": "w7 w14 w15 w16", "options": ["w34", "w44", "w54"], "gold": 1},
]


def write_spec(directory: Path, rows=SPEC_ROWS, **overrides) -> Path:
    (directory / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {
        "name": "mc",
        "answer_type": "multiple_choice",
        "data": "mc.jsonl",
        "prompt": "{q}",
        "choices": "options",
        "answer": "gold",
        "metrics": ["accuracy", "accuracy_norm"],
        **overrides,
    }
    path = directory / "mc.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_spec_file_makes_a_multiple_choice_task(tmp_path):
    task = get_task(str(write_spec(tmp_path)))
    records = load_examples(task)
    assert task.answer_type == "multiple_choice" and task.metrics == ("accuracy", "accuracy_norm")
    assert [task.gold_index(r) for r in records] == [0, 1, 2, 0, 1]  # indices and option texts
    assert task.requests(records[0]) == [("w3 w10", " w30"), ("w3 w10", " w40 w5"), ("w3 w10", " w50")]
    without_metrics = yaml.safe_load(write_spec(tmp_path).read_text())
    del without_metrics["metrics"]
    (tmp_path / "default.yaml").write_text(yaml.safe_dump(without_metrics))
    assert get_task(str(tmp_path / "default.yaml")).metrics == ("accuracy", "accuracy_norm")


def test_imsm_eval_on_a_spec_end_to_end(tmp_path, capsys):
    spec = write_spec(tmp_path)
    model_dir = save_tiny_model(tmp_path / "model")
    output = tmp_path / "out" / "mc.json"
    arguments = ["eval", "--model", str(model_dir), "--task", str(spec), "--output", str(output), "--dtype", "fp32"]
    assert main([*arguments, "--batch-size", "2"]) == 0
    summary = json.loads(output.read_text())["tasks"]["mc"]
    assert summary["n"] == 5 and list(summary["metrics"]) == [
        "accuracy", "accuracy_stderr", "accuracy_norm", "accuracy_norm_stderr", "gold_probability",
        "gold_log_likelihood",
    ]  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "out" / "mc.mc.jsonl").read_text().splitlines()]
    first = rows[0]
    assert first["choices"] == ["w30", "w40 w5", "w50"] and first["gold"] == 0 and first["prompt"] == "w3 w10"
    lls = first["log_likelihoods"]
    assert first["prediction"] == max(range(3), key=lls.__getitem__)
    assert first["gold_margin"] == pytest.approx(lls[0] - max(lls[1:]), abs=1e-4)
    assert first["scores"] == {
        "accuracy": float(first["prediction"] == 0),
        "accuracy_norm": float(first["prediction_norm"] == 0),
    }
    assert first["gate_frozen_weight"] is None and first["tokens"] == [1, 2, 1]
    assert summary["metrics"]["accuracy"] == pytest.approx(sum(r["scores"]["accuracy"] for r in rows) / 5)
    # The same questions in another batch size give the same log-likelihoods (one context per forward).
    again = tmp_path / "again.json"
    assert (
        main(["eval", "--model", str(model_dir), "--task", str(spec), "--output", str(again), "--dtype", "fp32"]) == 0
    )
    other = [json.loads(line) for line in (tmp_path / "again.mc.jsonl").read_text().splitlines()]
    flat = [ll for row in rows for ll in row["log_likelihoods"]]
    assert [ll for row in other for ll in row["log_likelihoods"]] == pytest.approx(flat, abs=1e-4)
    assert "mc" in capsys.readouterr().out
    # Per-question columns kept by experiments: accuracy, accuracy_norm, the gold option's probability,
    # margin and log-likelihood; no answer length.
    columns = question_columns(rows)
    expected = {"index", "accuracy", "accuracy_norm", "gold_probability", "gold_margin", "gold_log_likelihood"}
    assert set(columns) == expected
    assert columns["gold_log_likelihood"] == [
        pytest.approx(row["log_likelihoods"][row["gold"]], abs=1e-4) for row in rows
    ]


@pytest.mark.parametrize(
    "rows, overrides, message",
    [
        ([{"q": "w3", "gold": 0}], {}, r"mc.jsonl:1: record has no field 'options'"),
        ([SPEC_ROWS[0], {"q": "w3", "options": "w30 w31", "gold": 0}], {},
         r"mc.jsonl:2: field 'options' must be a list of two or more option strings"),
        ([{"q": "w3", "options": ["w30", 7], "gold": 0}], {}, r"mc.jsonl:1: field 'options' must be a list"),
        ([{"q": "w3", "options": ["w30", "w31"], "gold": 2}], {}, r"mc.jsonl:1: gold index 2 .* is out of range"),
        ([{"q": "w3", "options": ["w30", "w31"], "gold": True}], {}, r"mc.jsonl:1: gold index True"),
        ([{"q": "w3", "options": ["w30", "w31"], "gold": "w32"}], {}, r"mc.jsonl:1: gold 'w32' .* not among"),
        (SPEC_ROWS, {"metrics": ["exact_match"]}, r"'exact_match' is defined for answer_type text or yes_no or number"),
        (SPEC_ROWS, {"max_new_tokens": 4}, r"unknown key\(s\) \['max_new_tokens'\] for answer_type multiple_choice"),
    ],
)  # fmt: skip
def test_bad_specs_exit_2_with_one_line_and_no_files(tmp_path, capsys, rows, overrides, message):
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    spec = write_spec(spec_dir, rows, **overrides)
    output = tmp_path / "out" / "results.json"
    code = main(["eval", "--task", f"{spec}", "--output", str(output), "--model", "/no/model/needed"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_accuracy_norm_is_refused_for_a_generative_spec(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"q": "w3", "a": "w4"}\n')
    (tmp_path / "t.yaml").write_text("name: t\ndata: t.jsonl\nprompt: '{q}'\nanswer: a\nmetrics: [accuracy_norm]\n")
    with pytest.raises(IMSMError, match="'accuracy_norm' is defined for answer_type multiple_choice only"):
        get_task(str(tmp_path / "t.yaml"))


def killed_after_one_batch(read_choices):
    """`read_choices` stopped by a KeyboardInterrupt once its first batch is journaled."""

    def killed(model, formatter, questions, batch_size, on_batch_done, *rest):
        def once(indices, readings):
            on_batch_done(indices, readings)
            raise KeyboardInterrupt

        return read_choices(model, formatter, questions, batch_size, once, *rest)

    return killed


def _evaluate(spec, journal, batch_size=2):
    task = get_task(str(spec))
    return evaluate_task(
        gated_model(), _formatter(), task, load_examples(task), "test", batch_size=batch_size, progress=False,
        journal_path=journal, run_settings={"model": "tiny"},
    )  # fmt: skip


def test_an_interrupted_evaluation_resumes_from_its_journal(tmp_path, monkeypatch):
    import imsm.evaluation.choice as evaluate_choice

    spec = write_spec(tmp_path)
    uninterrupted = _evaluate(spec, None)
    assert uninterrupted.metrics["gate_frozen_weight"] > 0
    journal = tmp_path / "run.mc.partial.jsonl"
    real = evaluate_choice.read_choices
    monkeypatch.setattr(evaluate_choice, "read_choices", killed_after_one_batch(real))
    with pytest.raises(KeyboardInterrupt):
        _evaluate(spec, journal)
    with journal.open("a") as file:
        file.write('{"i": 4, "log_likeli')  # a line cut short by the kill
    scored = []

    def counting(model, formatter, questions, *rest):
        scored.extend(questions)
        return real(model, formatter, questions, *rest)

    monkeypatch.setattr(evaluate_choice, "read_choices", counting)
    resumed = _evaluate(spec, journal)
    assert resumed.resumed_examples == 2 and len(scored) == 3
    assert resumed.examples == uninterrupted.examples
    assert resumed.metrics == pytest.approx(uninterrupted.metrics)
    scored.clear()
    assert _evaluate(spec, journal).examples == uninterrupted.examples and not scored
    # Another task version (or model, or texts) is another run: the journal starts afresh.
    assert _evaluate(write_spec(tmp_path, version="2"), journal).resumed_examples == 0


def test_an_experiment_keeps_and_reports_a_multiple_choice_probe(tmp_path):
    from imsm.experiment import runner
    from imsm.experiment.report import render_report
    from imsm.experiment.spec import load_experiment

    save_tiny_model(tmp_path / "model")
    rows = [{"q": f"w{3 + i} w{10 + i}", "a": f"w{30 + i % 3}"} for i in range(8)]
    (tmp_path / "probe.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "probe.yaml").write_text(
        "name: probe\ndata: probe.jsonl\nprompt: '{q}'\nanswer: a\nmetrics: [exact_match]\n"
    )
    mc = str(write_spec(tmp_path))
    config = {
        "name": "tiny",
        "results": str(tmp_path / "results"),
        "work": str(tmp_path / "work"),
        "model": str(tmp_path / "model"),
        "train": {"epochs": 1, "batch_size": 4, "micro_batch_size": 2, "learning_rate": 0.01, "dtype": "fp32"},
        "eval": {"limit": 4, "batch_size": 4, "max_new_tokens": 3},
        "original": [mc],
        "grids": {"g": {"task": [str(tmp_path / "probe.yaml")], "peft": "lora", "fusion": ["none", "imsm"]}},
    }
    config["grids"]["g"]["evaluate"] = ["target", mc]
    path = tmp_path / "experiment.yaml"
    path.write_text(json.dumps(config))
    assert main(["experiment", str(path)]) == 0
    experiment = load_experiment(str(path))
    # The gated cell kept the frozen branch's states of the probe for the study's later cells.
    assert list((tmp_path / "work" / "frozen-states").glob("*/mc.safetensors"))
    questions = runner.read_cell_result(experiment, experiment.cells[0])["questions"][mc]
    assert {"accuracy", "accuracy_norm", "gold_probability"} <= set(questions) and "answer_chars" not in questions
    report = render_report(experiment, None)
    assert "mc (trained on probe) (accuracy)" in report or "mc (accuracy)" in report
    assert "mc accuracy_norm" in report and "mc gold_probability" in report
    assert "| IMSM-LoRA − LoRA | mc (accuracy) | 4 × 1 |" in report  # question by question
