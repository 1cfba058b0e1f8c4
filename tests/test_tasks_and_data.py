"""The task registry, the paper's prompts and golds, data loading and custom task specs."""

from __future__ import annotations

import builtins
import json
import os
import sys
import types
from pathlib import Path

import pytest
import yaml

from conftest import save_tiny_model
from imsm import IMSMError
from imsm.cli import main
from imsm.data import load_examples, read_jsonl, resolve_data_dir
from imsm.evaluation.results import predictions_path
from imsm.metrics import METRICS
from imsm.tasks import TASKS, get_task, parse_task_list

# CI lays shared/ beside the checkout; IMSM_DATA_DIR points elsewhere.
SHARED_DATA = Path(os.environ.get("IMSM_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")

# A few rows in each source's real format (fields as in shared/data), written by hand.
ROWS = {
    "mrpc/test.jsonl": [
        {
            "index": "0",
            "Quality": "1",
            "#1 ID": "1",
            "#2 ID": "2",
            "#1 String": "A cat sat.",
            "#2 String": "A cat was sitting.",
        },
        {
            "index": "1",
            "Quality": "0",
            "#1 ID": "3",
            "#2 ID": "4",
            "#1 String": "Rain fell.",
            "#2 String": "Stocks rose.",
        },
    ],
    "cola/in_domain_dev.jsonl": [{"source": "x", "label": "1", "original_judgment": "", "sentence": "He left."}],
    "cola/out_of_domain_dev.jsonl": [
        {"source": "y", "label": "0", "original_judgment": "*", "sentence": "Left he the."}
    ],
    "ropes/dev.jsonl": [
        {
            "title": "ropes",
            "background": "Lead harms brains.",
            "situation": "Group A used lead.",
            "question": "Which group is at risk?",
            "id": "1",
            "answers": [{"text": "Group A"}],
        }
    ],
    "gsm8k/test.jsonl": [
        {"question": "Tom has 3 apples and buys 4. How many?", "answer": "He has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"}
    ],
    "webquestions/test.jsonl": [
        {
            "url": "u",
            "utterance": "what does jamaican people speak?",
            "targetValue": '(list (description "Jamaican English") (description Patois))',
        }
    ],
    "freebaseqa/eval.jsonl": [{"question": "Who wrote Hamlet?", "answer": "william shakespeare"}],
    "multirc_yesno/test.jsonl": [{"question": "Is the sky green?", "passage": "The sky is blue.", "answer": "no"}],
}


@pytest.fixture
def data_dir(tmp_path):
    for name, rows in ROWS.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


PAPER_TASKS = {"mrpc", "cola", "ropes", "gsm8k", "webq", "freebaseqa", "multirc"}
MULTIPLE_CHOICE_PROBES = {"arc_easy", "arc_challenge", "piqa", "sciq", "winogrande"}


def test_the_seven_paper_tasks_and_the_knowledge_probes_are_registered():
    assert PAPER_TASKS | MULTIPLE_CHOICE_PROBES <= set(TASKS.names())
    assert {
        name for name in TASKS.names() if TASKS.get(name).answer_type == "multiple_choice"
    } == MULTIPLE_CHOICE_PROBES
    for name in TASKS.names():
        task = get_task(name)
        assert task.version and task.metrics and task.eval_split in task.splits


def test_unknown_task_suggests_the_nearest():
    with pytest.raises(IMSMError, match="unknown task 'gsm8': did you mean 'gsm8k'"):
        get_task("gsm8")
    with pytest.raises(IMSMError, match="did you mean 'webq'"):
        parse_task_list("mrpc, webqq")


def test_paper_prompts_golds_and_targets(data_dir):
    mrpc = load_examples(get_task("mrpc"), data_dir=data_dir)
    assert get_task("mrpc").prompt(mrpc[0]).endswith("Sentence1: A cat sat.\nSentence2: A cat was sitting.\nOutput:")
    assert [get_task("mrpc").golds(r) for r in mrpc] == [["yes"], ["no"]]
    cola = load_examples(get_task("cola"), data_dir=data_dir)
    assert len(cola) == 2 and get_task("cola").target(cola[1]) == "no"  # in- and out-of-domain dev
    gsm8k = get_task("gsm8k")
    record = load_examples(gsm8k, data_dir=data_dir)[0]
    assert gsm8k.golds(record) == ["7"]
    assert gsm8k.target(record) == "He has 3 + 4 = 7 apples.\nThe answer is 7."
    assert "formatted as: The answer is {answer}." in gsm8k.prompt(record)
    webq = get_task("webq")
    assert webq.golds(load_examples(webq, data_dir=data_dir)[0]) == ["Jamaican English", "Patois"]
    ropes = get_task("ropes")
    assert ropes.golds(load_examples(ropes, data_dir=data_dir)[0]) == ["Group A"]
    multirc = get_task("multirc")
    assert "Content: The sky is blue." in multirc.prompt(load_examples(multirc, data_dir=data_dir)[0])


def test_limit_takes_the_first_examples_and_must_be_positive(data_dir):
    assert [r["#1 String"] for r in load_examples(get_task("mrpc"), data_dir=data_dir, limit=1)] == ["A cat sat."]
    with pytest.raises(IMSMError, match="--limit must be at least 1"):
        load_examples(get_task("mrpc"), data_dir=data_dir, limit=0)


# In the tiny model's vocabulary (w3, w4, ...), so that `imsm eval` can score them.
PIQA_ROWS = [{"goal": f"w{3 + i}", "sol1": f"w{10 + i}", "sol2": f"w{20 + i}", "label": i % 2} for i in range(6)]


@pytest.fixture
def piqa_dir(tmp_path):
    (tmp_path / "piqa").mkdir()
    (tmp_path / "piqa" / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PIQA_ROWS))
    return tmp_path


def test_a_slice_is_the_task_read_from_its_start(piqa_dir, data_dir):
    piqa, held_out = get_task("piqa"), get_task("piqa@2")
    assert (held_out.name, held_out.first, piqa.first) == ("piqa@2", 2, None)
    for field in ("version", "prompt", "golds", "choices", "requests", "gold_index", "chance", "metrics", "splits"):
        assert getattr(held_out, field) == getattr(piqa, field), field
    goals = [r["goal"] for r in load_examples(held_out, data_dir=piqa_dir, limit=3)]
    assert goals == ["w5", "w6", "w7"]  # START first, then the limit counts from there
    lines = [r["_source"].rsplit(":", 1)[1] for r in load_examples(held_out, data_dir=piqa_dir)]
    assert lines == ["3", "4", "5", "6"]  # to the end without a limit; each record keeps its line
    assert load_examples(get_task("piqa@0"), data_dir=piqa_dir) == load_examples(piqa, data_dir=piqa_dir)
    assert [t.name for t in parse_task_list("mrpc, piqa@5, PIQA@1")] == ["mrpc", "piqa@5", "piqa@1"]
    assert predictions_path(Path("runs/r.json"), held_out).name == "r.piqa@2.jsonl"  # imsm eval's rows
    # Whatever split is read: a slice of the training split (imsm train --task mrpc@1) starts there too.
    (data_dir / "mrpc" / "train.jsonl").write_text((data_dir / "mrpc" / "test.jsonl").read_text())
    trained_on = load_examples(get_task("mrpc@1"), split="train", data_dir=data_dir)
    assert [r["#1 String"] for r in trained_on] == ["Rain fell."]


@pytest.mark.parametrize(
    "name, message",
    [
        ("piqa@-3", r"task 'piqa@-3': START is negative \(-3\); write NAME@START .* e.g. piqa@300"),
        ("piqa@x", "task 'piqa@x': START 'x' is not a whole number; write NAME@START"),
        ("piqa@1.5", "START '1.5' is not a whole number"),
        ("piqa@", "task 'piqa@': START is missing"),
        ("piqa@2@3", "START '2@3' is not a whole number"),
        ("piqa@020", "write START as 20, without leading zeros"),
        ("pqia@300", "unknown task 'pqia': did you mean 'piqa'"),
        ("probe.yaml@3", "task 'probe.yaml@3': a custom task spec cannot be sliced"),
    ],
)
def test_a_bad_slice_is_refused_with_the_fix(name, message):
    with pytest.raises(IMSMError, match=message):
        get_task(name)


def test_a_slice_past_the_last_question_says_so(piqa_dir, capsys):
    for start in (6, 5000):
        with pytest.raises(IMSMError, match=rf"^task piqa@{start} \(validation\) has no examples: piqa has 6 "):
            load_examples(get_task(f"piqa@{start}"), data_dir=piqa_dir, limit=2)
    assert len(load_examples(get_task("piqa@5"), data_dir=piqa_dir, limit=2)) == 1
    # imsm eval refuses in one line before loading any model.
    command = ["eval", "--task", "piqa@6", "--data-dir", str(piqa_dir), "--output", str(piqa_dir / "r.json")]
    assert main(command) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_imsm_eval_on_a_slice_names_its_results_and_rows_by_it(piqa_dir, tmp_path):
    model = save_tiny_model(tmp_path / "model")
    output = tmp_path / "out" / "r.json"
    command = ["eval", "--model", str(model), "--task", "piqa,piqa@4", "--limit", "2", "--dtype", "fp32"]
    assert main([*command, "--data-dir", str(piqa_dir), "--output", str(output)]) == 0
    tasks = json.loads(output.read_text())["tasks"]
    assert list(tasks) == ["piqa", "piqa@4"] and tasks["piqa@4"]["n"] == 2 and tasks["piqa@4"]["version"]
    rows = [json.loads(line) for line in (output.parent / "r.piqa@4.jsonl").read_text().splitlines()]
    assert [row["source"].rsplit(":", 1)[1] for row in rows] == ["5", "6"]  # questions 4 and 5
    assert [row["prompt"] for row in rows] == [get_task("piqa").prompt(r) for r in PIQA_ROWS[4:]]


def test_data_problems_are_reported_with_file_and_line(data_dir):
    with pytest.raises(IMSMError, match=r"data file .*ropes/train.jsonl' is missing"):
        load_examples(get_task("ropes"), split="train", data_dir=data_dir)
    (data_dir / "mrpc/test.jsonl").write_text('{"Quality": "1"}\n{not json\n')
    with pytest.raises(IMSMError, match=r"test.jsonl:2: malformed JSON"):
        load_examples(get_task("mrpc"), data_dir=data_dir)
    (data_dir / "mrpc/test.jsonl").write_text('{"Quality": "1", "#1 String": "a"}\n')
    with pytest.raises(IMSMError, match=r"test.jsonl:1: record has no field '#2 String'"):
        load_examples(get_task("mrpc"), data_dir=data_dir)
    (data_dir / "mrpc/test.jsonl").write_text("\n")
    with pytest.raises(IMSMError, match="has no examples"):
        load_examples(get_task("mrpc"), data_dir=data_dir)
    with pytest.raises(IMSMError, match="unknown split 'valid'"):
        load_examples(get_task("mrpc"), split="valid", data_dir=data_dir)


def test_data_dir_comes_from_the_flag_or_the_environment(data_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("IMSM_DATA_DIR", str(data_dir))
    assert resolve_data_dir(None) == data_dir
    assert resolve_data_dir(str(tmp_path)) == tmp_path
    with pytest.raises(IMSMError, match="does not exist"):
        resolve_data_dir(str(tmp_path / "nowhere"))


def test_without_data_or_hub_the_error_says_how_to_point_at_data(monkeypatch):
    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(IMSMError, match="--data-dir"):
        load_examples(get_task("mrpc"))
    with pytest.raises(IMSMError, match="no hub copy"):
        load_examples(get_task("freebaseqa"))


def test_hub_rows_are_converted_to_the_data_files_format(monkeypatch):
    fake = types.ModuleType("datasets")
    fake.load_dataset = lambda path, name, split: [{"question": "who?", "answers": ["Ann", "Anne"]}]
    monkeypatch.setitem(sys.modules, "datasets", fake)
    record = load_examples(get_task("webq"))[0]
    assert get_task("webq").golds(record) == ["Ann", "Anne"] and record["utterance"] == "who?"


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared/data is not beside the checkout")
def test_default_splits_have_the_papers_sizes():
    sizes = {name: len(load_examples(get_task(name), data_dir=SHARED_DATA)) for name in PAPER_TASKS}
    assert sizes == {
        "mrpc": 1725,
        "cola": 1043,
        "ropes": 1688,
        "gsm8k": 1319,
        "webq": 2032,
        "freebaseqa": 3996,
        "multirc": 312,
    }
    probes = {name: len(load_examples(get_task(name), data_dir=SHARED_DATA)) for name in MULTIPLE_CHOICE_PROBES}
    assert probes == {"arc_easy": 2376, "arc_challenge": 1172, "piqa": 1838, "sciq": 1000, "winogrande": 1267}
    for name in ("mrpc", "cola", "ropes", "gsm8k"):
        assert load_examples(get_task(name), split=get_task(name).train_split, data_dir=SHARED_DATA, limit=2)


def write_spec(tmp_path, **overrides):
    (tmp_path / "capitals.jsonl").write_text(
        '{"country": "France", "capital": "Paris"}\n{"country": "Peru", "capital": ["Lima", "Ciudad de Lima"]}\n'
    )
    spec = {
        "name": "capitals",
        "data": "capitals.jsonl",
        "prompt": "What is the capital of {country}?",
        "answer": "capital",
        "metrics": ["contains", "exact_match"],
        **overrides,
    }
    path = tmp_path / "capitals.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_custom_spec_tasks(tmp_path, monkeypatch):
    monkeypatch.chdir("/")  # relative data paths resolve against the spec, not the working directory
    task = get_task(str(write_spec(tmp_path)))
    records = load_examples(task)
    assert task.name == "capitals" and len(records) == 2
    assert task.prompt(records[0]) == "What is the capital of France?"
    assert task.golds(records[1]) == ["Lima", "Ciudad de Lima"] and task.target(records[1]) == "Lima"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"metrics": ["contain"]}, "unknown metric 'contain': did you mean 'contains'"),
        ({"metrics": []}, "'metrics' is empty"),
        ({"prompt": "Capital of {nation}?"}, "record has no field 'nation'"),
        ({"answer_type": "bool"}, "unknown answer_type 'bool'"),
        ({"temperature": 0.1}, "unknown key"),
        ({"data": "missing.jsonl"}, "is missing"),
    ],
)
def test_bad_custom_specs_are_refused(tmp_path, overrides, message):
    with pytest.raises(IMSMError, match=message):
        load_examples(get_task(str(write_spec(tmp_path, **overrides))))


@pytest.mark.parametrize("answer_type, metric", [("text", "f1"), ("number", "mcc")])
def test_a_metric_not_defined_for_the_answer_type_is_refused_in_one_line(tmp_path, capsys, answer_type, metric):
    path = write_spec(tmp_path, answer_type=answer_type, metrics=["contains", metric])
    code = main(["eval", "--task", str(path), "--output", str(tmp_path / "results.json")])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.count("\n") == 1
    for expected in (repr(str(path)), f"metric {metric!r} is defined for answer_type yes_no only", repr(answer_type)):
        assert expected in err, expected
    yes_no = get_task(str(write_spec(tmp_path, answer_type="yes_no", metrics=["accuracy", metric])))
    assert yes_no.metrics == ("accuracy", metric)


def test_built_in_tasks_ask_only_for_metrics_of_their_answer_type():
    for name in TASKS:
        task = TASKS.get(name)
        assert all(METRICS.get(metric).applies_to(task.answer_type) for metric in task.metrics), name


def test_spec_without_required_keys(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"name": "x"}))
    with pytest.raises(IMSMError, match="missing data, prompt, answer, metrics"):
        get_task(str(path))


def test_read_jsonl_skips_blank_lines_and_records_the_source(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert [(r["a"], r["_source"].rsplit(":", 1)[1]) for r in read_jsonl(path)] == [(1, "1"), (2, "3")]
