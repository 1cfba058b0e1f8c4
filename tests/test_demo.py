"""`imsm demo` on a tiny model, offline: the table, the results file, the plot, and the knowledge probe
(ARC-Easy and SciQ by log-likelihood) run on a few rows or skipped with one line when its data is absent."""

from __future__ import annotations

import json

import pytest

from conftest import save_tiny_model
from imsm.cli import main
from imsm.demo import knowledge
from imsm.demo.run import format_demo_table

ARC = [
    {
        "question": f"w{3 + i} w{4 + i}",
        "choices": {"text": ["w10", "w11 w12", "w13"], "label": ["A", "B", "C"]},
        "answerKey": "B",
    }
    for i in range(3)
]
SCIQ = [
    {
        "question": f"w{5 + i} w6",
        "distractor1": "w20",
        "distractor2": "w21",
        "distractor3": "w22 w23",
        "correct_answer": "w24",
        "support": f"w{7 + i} w8 w9",
    }
    for i in range(3)
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    save_tiny_model(root / "model")
    for name, rows in (("arc_easy", ARC), ("sciq", SCIQ)):
        (root / "data" / name).mkdir(parents=True)
        (root / "data" / name / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "empty").mkdir()
    return root


def run_demo(workspace, output, knowledge_dir) -> dict:
    arguments = ["demo", "--model", str(workspace / "model"), "--output", str(output)]
    arguments += ["--train-size", "8", "--test-size", "4", "--probe-size", "3", "--epochs", "1", "--dtype", "fp32"]
    arguments += ["--knowledge-data-dir", str(knowledge_dir), "--knowledge-size", "2"]
    assert main(arguments) == 0
    return json.loads((output / "demo_results.json").read_text())


def test_demo_runs_end_to_end_offline_with_the_knowledge_probe(workspace, tmp_path, capsys):
    results = run_demo(workspace, tmp_path / "demo", workspace / "data")
    out = capsys.readouterr().out
    assert list(results["table"]) == ["Original", "LoRA", "IMSM-LoRA"]
    assert results["details"]["IMSM-LoRA"]["training"]["steps"] == 1
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 0
    assert "IMSM-LoRA" in out
    # The probe scored the first two questions of each task for every row, and its row group is printed.
    assert results["knowledge"] == {"arc_easy": 2, "sciq": 2}
    for row, values in results["table"].items():
        assert 0 < values["knowledge_gold_probability"] < 1
        assert values["knowledge_accuracy"] in (0, 0.25, 0.5, 0.75, 1)
        assert {name: d["n"] for name, d in results["details"][row]["knowledge"].items()} == {"arc_easy": 2, "sciq": 2}
    assert "knowledge probe: 2 arc_easy + 2 sciq questions" in out
    assert "both P(gold)" in out and "knowledge P(gold)" in out


def test_demo_skips_the_knowledge_probe_in_one_line_without_its_data(workspace, tmp_path, capsys):
    results = run_demo(workspace, tmp_path / "demo", workspace / "empty")
    out = capsys.readouterr().out
    skipped = [line for line in out.splitlines() if "knowledge column skipped" in line]
    assert len(skipped) == 1 and "--knowledge-data-dir" in skipped[0] and "arc_easy/test.jsonl" in skipped[0]
    assert results["knowledge"] is None
    assert "knowledge_gold_probability" not in results["table"]["LoRA"]
    assert "P(gold)" not in out
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 0


def test_knowledge_probe_takes_the_first_questions_in_file_order(workspace):
    probe, line = knowledge.load_probe(workspace / "data", 2)
    assert [r["question"] for r in probe["arc_easy"][1]] == [ARC[0]["question"], ARC[1]["question"]]
    assert [r["question"] for r in probe["sciq"][1]] == [SCIQ[0]["question"], SCIQ[1]["question"]]
    assert "2 arc_easy + 2 sciq" in line
    assert knowledge.load_probe(None, 2)[0] is None


def test_the_knowledge_row_group_shows_each_task_and_both():
    row = {"target_accuracy": 0.5, "probe_contains": 0.8, "probe_hit@5": 0.9, "probe_gold_nll": 2.0}
    row.update({f"{g}_{k}": 0.5 for g in ("arc_easy", "sciq", "knowledge") for k in ("gold_probability", "accuracy")})
    text = format_demo_table({"Original": row, "LoRA": row}, "animal", "capitals")
    assert "arc_easy P(gold)" in text and "sciq acc" in text and "both P(gold)" in text
    assert text.count("50.0") == 2 * 6 + 2  # six knowledge cells and the target accuracy, per row
