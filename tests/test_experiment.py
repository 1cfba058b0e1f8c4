"""Experiment grids: every cell trained and evaluated once, resumable, reported honestly."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import save_tiny_model
from imsm import IMSMError, provenance
from imsm.cli import main
from imsm.experiment import runner
from imsm.experiment.cell_result import journal_stem
from imsm.experiment.claim import claimed
from imsm.experiment.report import render_report
from imsm.experiment.spec import load_experiment
from imsm.experiment.variants import Variant, parse_variants


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiment")
    save_tiny_model(root / "model")
    rows = [{"q": f"w{3 + i} w{10 + i} w{20 + i}", "a": f"w{30 + i % 3}"} for i in range(8)]
    (root / "probe.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "probe.yaml").write_text(
        "name: probe\ndata: probe.jsonl\nprompt: '{q}'\nanswer: a\nmetrics: [exact_match]\n"
    )
    facts = [{"q": f"w{40 + i} w{50 + i}", "a": f"w{60 + i}"} for i in range(6)]
    (root / "facts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in facts))
    (root / "facts.yaml").write_text("name: facts\ndata: facts.jsonl\nprompt: '{q}'\nanswer: a\nmetrics: [contains]\n")
    return root


def write_config(workspace, tmp_path, **changes) -> str:
    config = {
        "name": "tiny",
        "results": str(tmp_path / "results"),
        "work": str(tmp_path / "work"),
        "model": str(workspace / "model"),
        "train": {"epochs": 1, "batch_size": 4, "micro_batch_size": 2, "learning_rate": 0.01, "dtype": "fp32"},
        "eval": {"limit": 4, "batch_size": 4, "max_new_tokens": 3},
        "original": [str(workspace / "facts.yaml")],
        "grids": {
            "main": {
                "task": [str(workspace / "probe.yaml")],
                "peft": ["lora", "ia3"],
                "fusion": ["none", "imsm"],
                "seed": [0, 1],
                "evaluate": ["target", str(workspace / "facts.yaml")],
            },
            "rank": {"task": [str(workspace / "probe.yaml")], "peft": "lora", "gate_rank": [4, 8], "seed": [0, 1]},
        },
    }
    for key, value in changes.items():
        config[key] = value
    path = tmp_path / "experiment.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return str(path)


def first_table(report: str, grid: str) -> str:
    """The first markdown table of a grid's section of the report."""
    return next(block for block in report.split(f"## {grid}", 1)[1].split("\n\n") if block.startswith("|"))


def test_cells_are_expanded_deduplicated_and_vanilla_ignores_gate_options(workspace, tmp_path):
    experiment = load_experiment(write_config(workspace, tmp_path))
    # main: 2 methods x 2 fusions x 2 seeds = 8; rank: gate rank 8 repeats main's IMSM-LoRA cells.
    assert len(experiment.cells) == 10
    shared = [c for c in experiment.cells if c.grids == ["main", "rank"]]
    assert len(shared) == 2 and all(c.config["gate_rank"] == 8 for c in shared)
    assert all(len(c.evaluate) == 2 for c in shared)  # the union of both grids' evaluations
    vanilla = [c for c in experiment.cells if c.config["fusion"] == "none"]
    assert {c.config["gate_rank"] for c in vanilla} == {8}


def test_every_problem_in_the_file_is_reported_at_once(workspace, tmp_path):
    grids = {
        "a": {"task": ["mrcp"], "peft": ["lorra"], "fusion": ["imsm"], "colour": ["red"]},
        "b": {"task": ["mrpc"], "peft": ["lora"], "fusion": ["fancy"], "evaluate": ["webqq"]},
    }
    path = write_config(workspace, tmp_path, grids=grids, extra_field=1)
    with pytest.raises(IMSMError) as error:
        load_experiment(path)
    message = str(error.value)
    for expected in ("extra_field", "colour", "fusion mode", "webqq", "did you mean 'webq'", "lorra"):
        assert expected in message, expected
    assert "problem(s)" in message


def test_eval_settings_are_checked_and_default_to_imsm_evals(workspace, tmp_path):
    from imsm.cli.evaluate import EvalOptions

    facts = str(workspace / "facts.yaml")
    experiment = load_experiment(write_config(workspace, tmp_path, eval={"limits": {facts: 2}}))
    settings, command = experiment.eval_options, EvalOptions(task="mrpc", output="out.json")
    assert (settings.batch_size, settings.max_new_tokens, settings.likelihood, settings.limit) == (
        command.batch_size,
        command.max_new_tokens,
        command.likelihood,
        command.limit,
    )
    assert experiment.eval_limit(facts) == 2 and experiment.eval_limit("mrpc") is None
    with pytest.raises(IMSMError, match="eval: batch_size must be a positive integer, got 0"):
        load_experiment(write_config(workspace, tmp_path, eval={"batch_size": 0}))
    with pytest.raises(IMSMError, match="eval: limits.mrpc must be a positive integer, got -1"):
        load_experiment(write_config(workspace, tmp_path, eval={"limits": {"mrpc": -1}}))


@pytest.mark.slow
def test_run_writes_each_cell_and_a_second_run_skips_them(workspace, tmp_path, monkeypatch):
    path = write_config(workspace, tmp_path)
    assert main(["experiment", path]) == 0
    experiment = load_experiment(path)
    for cell in experiment.cells:
        result = runner.read_cell_result(experiment, cell)
        assert set(result["metrics"]) == set(cell.evaluate)
        assert result["settings"] == cell.config and result["trainable_parameters"] > 0
    assert (experiment.results / "original" / "facts.json").exists()
    # Per-example rows stay in the work directory, for paired analyses; no journal is left.
    rows = (experiment.work / experiment.cells[0].name / "eval.facts.jsonl").read_text().splitlines()
    assert len(rows) == 4 and {"prediction", "golds", "gold_nll"} <= set(json.loads(rows[0]))
    assert len((experiment.work / "original.facts.jsonl").read_text().splitlines()) == 4
    assert not list(experiment.work.rglob("*.partial.jsonl"))
    # Every question's scores are kept with the results too (small, committed), one row apart.
    questions = runner.read_cell_result(experiment, experiment.cells[0])["questions"]
    assert set(questions) == set(experiment.cells[0].evaluate)
    facts = questions[str(workspace / "facts.yaml")]
    assert facts["index"] == [0, 1, 2, 3] and len(facts["contains"]) == len(facts["gold_nll"]) == 4
    assert facts["answer_chars"] == [len(json.loads(r)["prediction"]) for r in rows]
    original = json.loads((experiment.results / "original" / "facts.json").read_text())
    assert len(original["questions"]["index"]) == 4

    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    def no_evaluation(*args, **kwargs):
        raise AssertionError("a finished cell was evaluated again")

    def written():  # every file of the experiment and when it was last written
        paths = [*experiment.results.rglob("*"), *experiment.work.rglob("*")]
        return {p: p.stat().st_mtime_ns for p in paths if p.is_file()}

    # Patched in the modules the runner imports them from when it calls them (no `raising=False`:
    # a name that moved fails here instead of guarding nothing); and whichever way a re-run went,
    # it would write a file.
    monkeypatch.setattr("imsm.train.run.train", no_training)
    monkeypatch.setattr("imsm.evaluation.run.evaluate_task", no_evaluation)
    before = written()
    assert main(["experiment", path]) == 0
    assert written() == before

    # A cell whose evaluation was lost is re-evaluated without retraining.
    monkeypatch.undo()
    victim = experiment.cells[0]
    runner.cell_result_path(experiment, victim).unlink()
    monkeypatch.setattr("imsm.train.run.train", no_training)
    assert main(["experiment", path]) == 0
    assert runner.read_cell_result(experiment, victim) is not None

    # Report: a table per grid with mean ± std, t-tests of IMSM against vanilla, plots.
    report = render_report(experiment, tmp_path / "plots")
    assert "## main" in report and "## rank" in report
    assert "IMSM-LoRA − LoRA" in report and "IMSM-(IA)3 − (IA)3" in report
    assert "±" in report and "Original" in report and "Missing" not in report
    assert (tmp_path / "plots" / "main.png").stat().st_size > 1000
    # What the probe keeps: trained on probe, evaluated on facts, against the Original's facts NLL.
    assert (tmp_path / "plots" / "main-forgetting.png").stat().st_size > 1000
    assert not (tmp_path / "plots" / "rank-forgetting.png").exists()  # target only: nothing to forget
    assert "gate_rank=4" in report
    assert "Gate weight on the frozen branch" in report  # IMSM rows only; vanilla has no gate
    assert "facts answer_chars" in report  # the length "contains" moves with, beside hit@5
    assert "question by question" in report and "| 4 × 2 |" in report  # 4 facts questions, 2 seeds
    # A grid with probes carries the paper's "Avg." over its columns, and tests it.
    main_table = first_table(report, "main").splitlines()
    assert main_table[0].endswith("| avg. |") and all(line.count("|") == 6 for line in main_table)
    assert "| IMSM-LoRA − LoRA | avg. | 2 |" in report
    assert "avg." not in report.split("## rank", 1)[1]  # target-only grid: no average


def test_interrupted_training_resumes_from_its_checkpoint(workspace, tmp_path, monkeypatch):
    grids = {"g": {"task": [str(workspace / "probe.yaml")], "peft": "lora", "epochs": 2, "checkpoint_every": 1}}
    path = write_config(workspace, tmp_path, grids=grids, original=[])
    experiment = load_experiment(path)
    calls = []
    from imsm.train import run as train_run

    real_train = train_run.train

    def dying_train(config, *args, **kwargs):
        calls.append(config.resume)
        if len(calls) == 1:  # the first attempt dies after its first checkpoint
            from imsm.train import loop

            original = loop.save_checkpoint

            def save_then_die(*a, **k):
                original(*a, **k)
                raise KeyboardInterrupt

            monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
            try:
                return real_train(config, *args, **kwargs)
            finally:
                monkeypatch.setattr(loop, "save_checkpoint", original)
        return real_train(config, *args, **kwargs)

    monkeypatch.setattr("imsm.train.run.train", dying_train)
    with pytest.raises(KeyboardInterrupt):
        runner.run_experiment(experiment, log=lambda line: None)
    runner.run_experiment(experiment, log=lambda line: None)
    assert calls == [False, True]
    assert runner.is_done(experiment, experiment.cells[0])


def test_a_cell_killed_while_evaluating_keeps_its_finished_tasks_and_batches(workspace, tmp_path, monkeypatch):
    facts = str(workspace / "facts.yaml")
    grids = {"g": {"task": [str(workspace / "probe.yaml")], "peft": "lora", "evaluate": ["target", facts]}}
    path = write_config(workspace, tmp_path, grids=grids, original=[], eval={"limit": 4, "batch_size": 2})
    experiment = load_experiment(path)
    cell = experiment.cells[0]
    import imsm.evaluation.generation as evaluate_module

    real_pass = evaluate_module.answer_and_score

    def killed_in_facts(model, formatter, prompts, targets, max_new_tokens, batch_size, yes_no, on_batch_done, **kw):
        def once(rows, outcomes):
            on_batch_done(rows, outcomes)
            if prompts == facts_prompts:
                raise KeyboardInterrupt  # the session ends in the second task, after one batch

        return real_pass(model, formatter, prompts, targets, max_new_tokens, batch_size, yes_no, once, **kw)

    from imsm.data import load_examples
    from imsm.tasks import get_task

    facts_task = get_task(facts)
    facts_prompts = [facts_task.prompt(r) for r in load_examples(facts_task, None, None, 4)]
    monkeypatch.setattr(evaluate_module, "answer_and_score", killed_in_facts)
    with pytest.raises(KeyboardInterrupt):
        runner.run_experiment(experiment, log=lambda line: None)
    kept = runner.read_cell_result(experiment, cell)
    assert list(kept["metrics"]) == [str(workspace / "probe.yaml")] and not runner.is_done(experiment, cell)
    assert (experiment.work / cell.name / "eval.facts.partial.jsonl").exists()

    evaluated = []
    monkeypatch.setattr("imsm.train.run.train", lambda *a, **k: pytest.fail("a trained cell was trained again"))
    monkeypatch.setattr(
        evaluate_module, "answer_and_score", lambda m, f, p, *a, **k: evaluated.extend(p) or real_pass(m, f, p, *a, **k)
    )
    runner.run_experiment(experiment, log=lambda line: None)
    assert runner.is_done(experiment, cell) and len(evaluated) == 2  # the journal held the first batch
    assert not (experiment.work / cell.name / "eval.facts.partial.jsonl").exists()


def test_a_sliced_probe_is_checked_limited_and_names_its_files(workspace, tmp_path):
    data = tmp_path / "data"
    (data / "piqa").mkdir(parents=True)
    rows = [{"goal": f"w{3 + i}", "sol1": f"w{10 + i}", "sol2": f"w{20 + i}", "label": i % 2} for i in range(6)]
    (data / "piqa" / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    probe = str(workspace / "probe.yaml")
    grids = {"held": {"task": [probe], "peft": "lora", "fusion": "none", "evaluate": ["target", "piqa@3"]}}
    eval_settings = {"limit": 4, "batch_size": 4, "limits": {"piqa@3": 2}}
    path = write_config(workspace, tmp_path, grids=grids, original=["piqa", "piqa@3"], eval=eval_settings)
    experiment = load_experiment(path)
    assert experiment.cells[0].evaluate == [probe, "piqa@3"]
    assert (experiment.eval_limit("piqa@3"), experiment.eval_limit("piqa")) == (2, 4)
    assert journal_stem(Variant(), "piqa@3") == "eval.piqa@3"
    assert journal_stem(Variant(adapter_scale=0.5), "piqa@3") == "eval.adapter_scale-0.5.piqa@3"

    # The base model's row: the slice's own file, named for it, holding questions 3 and 4 (limit 2).
    runner.run_original(experiment, data, log=lambda line: None)
    written = {p.name for p in (experiment.results / "original").iterdir()}
    assert written == {"piqa.json", "piqa@3.json"}
    sliced = runner.read_original_row(experiment, "piqa@3")
    assert sliced["task"] == "piqa@3" and sliced["metrics"] and sliced["questions"]["index"] == [0, 1]
    rows = [json.loads(line) for line in (experiment.work / "original.piqa@3.jsonl").read_text().splitlines()]
    assert [row["source"].rsplit(":", 1)[1] for row in rows] == ["4", "5"]  # file lines of questions 3, 4
    assert len(runner.read_original_row(experiment, "piqa")["questions"]["index"]) == 4

    # A bad slice anywhere in the file is one of its problems, with the fix.
    bad = write_config(workspace, tmp_path, original=["pqia@3"], eval={"limits": {"piqa@-1": 2}}, grids=grids)
    with pytest.raises(IMSMError) as error:
        load_experiment(bad)
    assert "eval.limits: task 'piqa@-1': START is negative" in str(error.value)
    assert "original: unknown task 'pqia': did you mean 'piqa'" in str(error.value)


def test_results_from_other_settings_are_refused(workspace, tmp_path):
    path = write_config(workspace, tmp_path, original=[], grids={"g": {"task": str(workspace / "probe.yaml")}})
    runner.check_results_directory(load_experiment(path))
    changed = write_config(
        workspace,
        tmp_path,
        original=[],
        grids={"g": {"task": str(workspace / "probe.yaml")}},
        eval={"limit": 5, "batch_size": 4},
    )
    with pytest.raises(IMSMError, match=r"other settings \(eval.limit, eval.max_new_tokens differ\)"):
        runner.check_results_directory(load_experiment(changed))


def test_report_on_partial_results_lists_what_is_missing(workspace, tmp_path):
    path = write_config(workspace, tmp_path)
    report = render_report(load_experiment(path), None)
    assert "Missing (8 of 8 cells)" in report and "Original row missing for: " in report


def test_a_shared_cell_is_missing_only_from_the_grid_that_still_owes_it_an_evaluation(workspace, tmp_path):
    probe, facts = str(workspace / "probe.yaml"), str(workspace / "facts.yaml")
    target_only = {"task": [probe], "peft": "lora", "fusion": "imsm"}
    assert main(["experiment", write_config(workspace, tmp_path, grids={"a": target_only}, original=[])]) == 0
    # A second grid asks the same cell for a probe it has not been evaluated on yet.
    grids = {"a": target_only, "b": {**target_only, "evaluate": ["target", facts]}}
    report = render_report(load_experiment(write_config(workspace, tmp_path, grids=grids, original=[])), None)
    section_a, section_b = report.split("## a", 1)[1].split("## b", 1)
    assert "Missing" not in section_a
    assert "Missing (1 of 1 cells)" in section_b


def test_an_axis_of_one_value_is_named_once_for_the_grid_not_in_every_row(workspace, tmp_path):
    # A grid that overrides the file's rate for one method (as the (IA)3 arms of a study do).
    grids = {
        "ia3": {
            "task": [str(workspace / "probe.yaml")],
            "peft": "ia3",
            "learning_rate": [0.003],
            "fusion": ["none", "imsm"],
        }
    }
    report = render_report(load_experiment(write_config(workspace, tmp_path, grids=grids, original=[])), None)
    assert "Every row: peft=ia3, learning_rate=0.003." in report
    assert "| (IA)3 |" in report and "| IMSM-(IA)3 |" in report
    assert "[learning_rate" not in report
    # An axis of two values still tells its rows apart.
    report = render_report(load_experiment(write_config(workspace, tmp_path)), None)
    assert "IMSM-LoRA [gate_rank=4]" in report and "Every row: peft=lora." in report


def test_report_carries_its_commands_and_the_authors_discussion(workspace, tmp_path, capsys):
    grids = {"g": {"task": [str(workspace / "probe.yaml")], "peft": "lora", "fusion": ["none", "imsm"]}}
    path = write_config(workspace, tmp_path, grids=grids, original=[])
    assert main(["experiment", path]) == 0
    notes = tmp_path / "notes.md"
    notes.write_text("## Discussion\n\nIMSM did not help here.\n")
    output = tmp_path / "report.md"
    assert main(["report", path, "--output", str(output), "--discussion", str(notes)]) == 0
    report = output.read_text()
    assert f"imsm experiment {path}" in report and f"--discussion {notes}" in report
    assert "2 of 2 cells finished" in report and "cpus" in report  # the machine line
    # The discussion comes before the tables it discusses.
    assert report.index("IMSM did not help here.") < report.index("## g")

    capsys.readouterr()
    assert main(["report", path, "--output", str(output), "--discussion", str(tmp_path / "absent.md")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "absent.md" in err[0] and "does not exist" in err[0]
    assert output.read_text() == report  # nothing overwritten on bad input

    (tmp_path / "binary.md").write_bytes(b"\x89PNG\r\n\x1a\n")
    assert main(["report", path, "--output", str(output), "--discussion", str(tmp_path / "binary.md")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "binary.md' is not UTF-8 text (byte 0); save it as UTF-8" in err[0]
    assert output.read_text() == report


def test_a_claim_excludes_other_holders_until_released(tmp_path):
    lock = tmp_path / "claims" / "cell.lock"
    with claimed(lock) as first:
        assert first
        with claimed(lock) as second:  # another open of the file: another worker
            assert not second
    with claimed(lock) as again:
        assert again


@pytest.mark.slow
def test_a_killed_workers_claim_is_free_at_once(tmp_path):
    lock = tmp_path / "cell.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_CLAIM, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with claimed(lock) as mine:
            assert not mine
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with claimed(lock) as mine:
        assert mine


HOLD_CLAIM = """
import sys, time
from pathlib import Path
from imsm.experiment.claim import claimed
with claimed(Path(sys.argv[1])) as mine:
    print("held" if mine else "refused", flush=True)
    time.sleep(60)
"""


def test_a_cell_held_by_another_worker_is_left_to_it(workspace, tmp_path):
    grids = {"g": {"task": [str(workspace / "probe.yaml")], "peft": "lora", "seed": [0, 1]}}
    path = write_config(workspace, tmp_path, grids=grids, original=[])
    experiment = load_experiment(path)
    busy, free = experiment.cells
    lines = []
    with claimed(runner.claim_path(experiment, busy.name)):
        runner.run_experiment(experiment, log=lines.append)
    assert runner.read_cell_result(experiment, busy) is None
    assert runner.is_done(experiment, free)
    assert any(busy.name in line and "another worker" in line for line in lines)
    assert "1 cells were running in other workers" in lines[-1]
    with claimed(runner.claim_path(experiment, busy.name)):
        assert runner.cell_state(experiment, busy) == "running"
    assert runner.cell_state(experiment, busy) == "to run"
    assert runner.cell_state(experiment, free) == "done"
    # Released, the next run takes it.
    runner.run_experiment(experiment, log=lines.append)
    assert runner.is_done(experiment, busy)


def test_a_cell_left_unfinished_by_a_stopped_worker_is_taken_up_in_the_same_run(workspace, tmp_path, monkeypatch):
    grids = {"g": {"task": [str(workspace / "probe.yaml")], "peft": "lora", "seed": [0, 1]}}
    facts = str(workspace / "facts.yaml")
    experiment = load_experiment(write_config(workspace, tmp_path, grids=grids, original=[facts]))
    busy, free = experiment.cells
    other_worker = contextlib.ExitStack()
    other_worker.enter_context(claimed(runner.claim_path(experiment, busy.name)))
    other_worker.enter_context(claimed(runner.claim_path(experiment, "original-facts")))
    real_run_cell = runner.run_cell

    def stop_the_other_worker_meanwhile(experiment, cell, *args, **kwargs):
        other_worker.close()  # killed while this worker runs `free`, `busy` unfinished
        return real_run_cell(experiment, cell, *args, **kwargs)

    monkeypatch.setattr(runner, "run_cell", stop_the_other_worker_meanwhile)
    lines = []
    runner.run_experiment(experiment, log=lines.append)
    assert runner.is_done(experiment, busy) and runner.is_done(experiment, free)
    assert runner.read_original_row(experiment, facts) is not None  # the base model's row too
    assert any("1 cells another worker held are free again" in line for line in lines)
    assert any("all 2 cells done" in line for line in lines)


def test_time_left_counts_unfinished_cells_shared_with_the_workers_holding_one(workspace, tmp_path):
    grids = {"g": {"task": [str(workspace / "probe.yaml")], "peft": "lora", "seed": [0, 1, 2, 3, 4]}}
    experiment = load_experiment(write_config(workspace, tmp_path, grids=grids, original=[]))
    held, mine, *rest = experiment.cells
    minutes = [600.0]  # this worker's cells took 10 min each
    assert runner._time_left(experiment, experiment.cells, mine, minutes) == "about 0.7 h left"  # 4 x 10 min
    # Another worker on a cell, even one this worker has passed, shares what is left.
    with claimed(runner.claim_path(experiment, held.name)):
        assert runner._time_left(experiment, experiment.cells, mine, minutes) == "about 0.3 h left with 2 workers"


def test_per_task_options_do_not_split_a_methods_row(workspace, tmp_path):
    probe, facts = str(workspace / "probe.yaml"), str(workspace / "facts.yaml")
    grids = {"g": {"task": [probe, facts], "peft": "lora", "fusion": ["none", "imsm"]}}
    path = write_config(workspace, tmp_path, grids=grids, original=[], task_options={facts: {"limit": 4}})
    experiment = load_experiment(path)
    assert len({c.config.get("limit") for c in experiment.cells}) == 2  # the option took effect
    report = render_report(experiment, None)
    table = first_table(report, "g")
    # One row per method and fusion, each with a column per training task.
    assert [line.split(" | ")[0] for line in table.splitlines()[2:]] == ["| LoRA", "| IMSM-LoRA"]


def test_report_scales_proportions_and_mcc_to_percent_but_not_nll_or_lengths():
    from imsm.experiment.report.tables import spread_text

    assert spread_text([0.253, 0.247], "mcc", 2) == "25.0 ± 0.4"  # as the paper prints CoLA
    assert spread_text([0.5], "accuracy", 1) == "50.0"
    assert spread_text([4.8765], "gold_nll", 1) == "4.877" and spread_text([14.92], "answer_chars", 3) == "14.9 (n=1)"


def test_a_gate_option_axis_keeps_one_vanilla_row_paired_with_every_gated_row(workspace, tmp_path):
    probe = str(workspace / "probe.yaml")
    grids = {"g": {"task": [probe], "peft": "lora", "fusion": ["none", "imsm"], "gate_learning_rate": [1e-3, 3e-2]}}
    experiment = load_experiment(write_config(workspace, tmp_path, grids=grids, original=[]))
    assert len(experiment.cells) == 3  # the vanilla cell has no gate, so the axis does not copy it
    report = render_report(experiment, None)
    table = first_table(report, "g")
    labels = [line.split(" | ")[0] for line in table.splitlines()[2:]]
    assert labels == [
        "| LoRA",
        "| IMSM-LoRA [gate_learning_rate=0.001]",
        "| IMSM-LoRA [gate_learning_rate=0.03]",
    ]
    comparisons = [line.split(" | ")[0] for line in report.splitlines() if line.startswith("| ") and " − " in line]
    assert comparisons == [
        "| IMSM-LoRA [gate_learning_rate=0.001] − LoRA",
        "| IMSM-LoRA [gate_learning_rate=0.03] − LoRA",
        # ... and the variant against IMSM as the paper sets it
        "| IMSM-LoRA [gate_learning_rate=0.03] − IMSM-LoRA [gate_learning_rate=0.001]",
    ]
    assert "(each gated row − its vanilla twin; each variant − IMSM at its default gate settings," in report


def test_an_ablation_grid_with_vanilla_rows_tests_against_both_vanilla_and_default_imsm(workspace, tmp_path):
    grids = {"g": {"task": [str(workspace / "probe.yaml")], "peft": "lora", "fusion": ["none", "imsm", "mean"]}}
    report = render_report(load_experiment(write_config(workspace, tmp_path, grids=grids, original=[])), None)
    comparisons = [line.split(" | ")[0] for line in report.splitlines() if line.startswith("| ") and " − " in line]
    assert comparisons == ["| IMSM-LoRA − LoRA", "| IMSM-LoRA (mean) − LoRA", "| IMSM-LoRA (mean) − IMSM-LoRA"]


@pytest.mark.parametrize(
    ("axis", "expected"),
    [
        ({"fusion": ["imsm", "no-query", "mean"]}, ["IMSM-LoRA (no query)", "IMSM-LoRA (mean)"]),
        ({"fusion": "imsm", "gate_rank": [4, 8, 16]}, ["IMSM-LoRA [gate_rank=4]", "IMSM-LoRA [gate_rank=16]"]),
    ],
)
def test_a_grid_without_vanilla_rows_tests_each_variant_against_default_imsm(workspace, tmp_path, axis, expected):
    grids = {"g": {"task": [str(workspace / "probe.yaml")], "peft": "lora", **axis}}
    report = render_report(load_experiment(write_config(workspace, tmp_path, grids=grids, original=[])), None)
    assert "Paired t-tests (each variant − IMSM at its default gate settings" in report
    reference = "IMSM-LoRA [gate_rank=8]" if "gate_rank" in axis else "IMSM-LoRA"
    comparisons = [line.split(" | ")[0] for line in report.splitlines() if line.startswith("| ") and " − " in line]
    assert comparisons == [f"| {label} − {reference}" for label in expected]


def test_a_corpus_level_metric_is_compared_question_by_question_through_accuracy(workspace, tmp_path):
    rows = [{"q": f"w{3 + i} w{10 + i}", "a": "yes" if i % 2 else "no"} for i in range(6)]
    (tmp_path / "yn.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = tmp_path / "yn.yaml"
    spec.write_text(
        "name: yn\ndata: yn.jsonl\nprompt: '{q}'\nanswer: a\nanswer_type: yes_no\nmetrics: [mcc, accuracy]\n"
    )
    grids = {"g": {"task": [str(spec)], "peft": "lora", "fusion": ["none", "imsm"]}}
    path = write_config(workspace, tmp_path, grids=grids, original=[])
    assert main(["experiment", path]) == 0
    experiment = load_experiment(path)
    questions = runner.read_cell_result(experiment, experiment.cells[0])["questions"][str(spec)]
    assert "mcc" not in questions and len(questions["accuracy"]) == 4  # MCC has no per-question value
    report = render_report(experiment, None)
    assert "| IMSM-LoRA − LoRA | yn (mcc) | 1 |" in report  # the seed-level test keeps the paper's metric
    assert "| IMSM-LoRA − LoRA | yn (accuracy) | 4 × 1 |" in report


def test_inspect_gates_opens_every_finished_gated_cell_once_and_the_report_shows_them(workspace, tmp_path, capsys):
    grid = {"task": [str(workspace / "probe.yaml")], "peft": "lora", "fusion": ["none", "imsm"], "seed": [0, 1]}
    grid["evaluate"] = ["target", str(workspace / "facts.yaml")]
    target_only = {key: value for key, value in grid.items() if key != "evaluate"}  # the same cells
    gated_only = {**target_only, "fusion": ["imsm"]}  # no vanilla row to set beside the gate
    grids = {"g": grid, "t": target_only, "i": gated_only}
    path = write_config(workspace, tmp_path, grids=grids, original=[])
    experiment = load_experiment(path)
    assert main(["experiment", path, "--inspect-gates"]) == 0  # nothing finished yet: nothing to do
    assert "0 finished gated cells" in capsys.readouterr().out
    assert main(["experiment", path]) == 0
    assert main(["experiment", path, "--inspect-gates", "--gate-examples", "3"]) == 0
    from imsm.experiment.gates import gate_report_path, read_gate_report

    for cell in experiment.cells:
        report = read_gate_report(experiment, cell)
        if cell.config["fusion"] == "none":
            assert report is None  # no gate to open
            continue
        tasks = report["tasks"]
        assert [t["task"] for t in tasks] == ["probe", "facts"] and report["limit"] == 3
        assert tasks[0]["examples"] == 3 and tasks[0]["moved"] is not None
        assert set(tasks[0]["gold_nll"]) == {"gate", "initial", "half", "tuned_only", "frozen_only"}
    gated = next(c for c in experiment.cells if c.config["fusion"] == "imsm")
    written = gate_report_path(experiment, gated).stat().st_mtime_ns
    assert main(["experiment", path, "--inspect-gates"]) == 0  # a second pass skips what it has
    assert gate_report_path(experiment, gated).stat().st_mtime_ns == written
    report = render_report(experiment, None)
    assert "The gate opened up" in report
    grid_g, grid_t = report.split("## t", 1)
    grid_t, grid_i = grid_t.split("## i", 1)
    assert "NLL vanilla twin" in grid_t and "NLL vanilla twin" not in grid_i
    assert "| IMSM-LoRA | probe | 2 |" in grid_i
    assert "| IMSM-LoRA | probe | 2 |" in grid_g and "| IMSM-LoRA | facts | 2 |" in grid_g
    assert "| IMSM-LoRA | probe | 2 |" in grid_t and "| IMSM-LoRA | facts |" not in grid_t  # only its columns
    # Beside the gate, the vanilla twin's NLL on the same (first 3) questions, same seeds.
    vanilla = [c for c in experiment.cells if c.config["fusion"] == "none"]
    facts = [runner.read_cell_result(experiment, c)["questions"][str(workspace / "facts.yaml")] for c in vanilla]
    expected = sum(sum(q["gold_nll"][:3]) / 3 for q in facts) / len(facts)
    facts_row = next(line for line in grid_g.splitlines() if line.startswith("| IMSM-LoRA | facts | 2 |"))
    assert facts_row.endswith(f"| {expected:.3f} |")


def test_pairs_that_all_differ_equally_get_no_p_value_rather_than_zero():
    import math

    from imsm.experiment.report.tables import _test_cells
    from imsm.experiment.stats import paired_t_test

    test = paired_t_test([0.02, 0.03, 0.05], [0.01, 0.02, 0.04])  # one question more on each seed
    assert math.isinf(test.t)
    difference, t, p = _test_cells(test, "contains")
    assert difference == "+1.00" and t == "–" and "all pairs differ equally" in p


def test_the_shipped_smollm2_grid_trains_each_setting_once():
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "configs" / "smollm2-paper-tables.yaml"
    experiment = load_experiment(str(config))
    assert {"table1", "table2", "table4", "table6", "figure4"} <= set(experiment.grids)
    assert len(experiment.cells) == 105  # docs/results.md reports on exactly these
    # Figure 4 reads cells that Tables 2 and 4 train; it only adds evaluations.
    figure4 = [c for c in experiment.cells if "figure4" in c.grids]
    assert len(figure4) == 12 and all(set(c.grids) & {"table2", "table4"} for c in figure4)
    # Table 4's vanilla rows are Table 1's cells.
    vanilla = [c for c in experiment.cells if "table4" in c.grids and c.config["fusion"] == "none"]
    assert len(vanilla) == 9 and all("table1" in c.grids for c in vanilla)


def variant_grids(workspace, variants, fusion="none", peft="lora"):
    task, facts = str(workspace / "probe.yaml"), str(workspace / "facts.yaml")
    return {
        "curve": {
            "task": [task],
            "peft": peft,
            "fusion": fusion,
            "seed": 0,
            "epochs": 2,
            "evaluate": [facts],
            "variants": variants,
        },
    }


def test_variants_read_snapshots_scaled_and_remixed_adapters_and_resume(workspace, tmp_path, monkeypatch, capsys):
    """A learning curve and the post-hoc baselines from one run: snapshots at chosen steps, the
    final adapter scaled by λ, mixed 50/50 and with its intruders reduced, each evaluated and kept
    under its own key."""
    facts = str(workspace / "facts.yaml")
    variants = [{}, {"step": 1}, {"step": 2, "fusion": "mean"}, {"adapter_scale": 0.0}, {"fusion": "mean"}]
    variants.append({"intruders": 0.5})  # peft's reduce_intruder_dimension, applied at evaluation
    path = write_config(workspace, tmp_path, grids=variant_grids(workspace, variants), original=[facts])
    experiment = load_experiment(path)
    [cell] = experiment.cells
    assert cell.snapshot_steps == [1, 2] and cell.evaluate == [facts]
    assert list(cell.variants) == ["step=1", "step=2,fusion=mean", "adapter_scale=0", "fusion=mean", "intruders=0.5"]
    runner.run_experiment(experiment, log=lambda line: None)
    result = runner.read_cell_result(experiment, cell)
    assert runner.is_done(experiment, cell)
    assert set(result["variants"]) == set(cell.variants)
    for key in cell.variants:
        assert set(result["variants"][key]["metrics"]) == {facts}
        assert len(result["variants"][key]["questions"][facts]["gold_nll"]) == 4
    run = experiment.work / cell.name
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == ["step-000001", "step-000002"]
    assert (run / "eval.step-1.facts.jsonl").exists() and (run / "eval.adapter_scale-0.facts.jsonl").exists()
    # λ = 0 is the base model: the same answers and gold NLLs as the original row.
    original = json.loads((experiment.results / "original" / "facts.json").read_text())
    scaled = result["variants"]["adapter_scale=0"]["questions"][facts]
    assert scaled["gold_nll"] == pytest.approx(original["questions"]["gold_nll"], abs=1e-4)

    # A variant whose result was lost is evaluated again, alone, without training.
    del result["variants"]["step=1"]
    runner.cell_result_path(experiment, cell).write_text(runner.result_text(result))
    capsys.readouterr()
    assert main(["experiment", path, "--dry-run"]) == 0  # says what is left
    progress = f"{cell.name}: to run; 5 of 6 evaluations done; to evaluate: [step=1] on {facts} (curve)"
    assert capsys.readouterr().out.splitlines()[0] == progress
    evaluated = []
    import imsm.evaluation.run as evaluate_module

    real = evaluate_module.evaluate_task
    monkeypatch.setattr("imsm.train.run.train", lambda *a, **k: pytest.fail("a trained cell was trained again"))
    monkeypatch.setattr(evaluate_module, "evaluate_task", lambda *a, **k: evaluated.append(1) or real(*a, **k))
    runner.run_experiment(experiment, log=lambda line: None)
    assert len(evaluated) == 1 and runner.is_done(experiment, cell)


def test_an_intruder_variant_that_changes_no_weight_reuses_the_adapter_s_evaluations(workspace, tmp_path, monkeypatch):
    """peft finds no intruder dimension in a barely trained adapter, so its reduced variant computes
    exactly what the adapter as trained does: the study takes those evaluations, saying so, instead
    of running them again. A strongly trained adapter's reduction is evaluated as usual."""
    facts = str(workspace / "facts.yaml")
    grids = variant_grids(workspace, [{}, {"intruders": 0.5}])
    grids["curve"]["learning_rate"] = [1e-7, 0.3]
    experiment = load_experiment(write_config(workspace, tmp_path, grids=grids, original=[facts]))
    import imsm.evaluation.run as evaluate_module

    real, calls = evaluate_module.evaluate_task, []
    monkeypatch.setattr(evaluate_module, "evaluate_task", lambda *a, **k: calls.append(1) or real(*a, **k))
    runner.run_experiment(experiment, log=lambda line: None)
    cells = {cell.config["learning_rate"]: cell for cell in experiment.cells}
    slight, strong = (runner.read_cell_result(experiment, cells[lr]) for lr in (1e-7, 0.3))
    reduced = slight["variants"]["intruders=0.5"]
    assert reduced["metrics"][facts] == slight["metrics"][facts]
    assert reduced["questions"][facts] == slight["questions"][facts]
    record = reduced["evaluation"][facts]
    assert record["reused_from"] == "as trained" and "bitwise as trained" in record["why"]
    assert record["machine"] == slight["evaluation"][facts]["machine"]  # where the numbers were computed
    run = experiment.work / cells[1e-7].name
    assert (run / "eval.intruders-0.5.facts.jsonl").read_text() == (run / "eval.facts.jsonl").read_text()
    strongly_reduced = strong["variants"]["intruders=0.5"]
    assert "reused_from" not in strongly_reduced["evaluation"][facts]
    assert strongly_reduced["questions"][facts]["gold_nll"] != strong["questions"][facts]["gold_nll"]
    assert len(calls) == 4  # Base, each adapter as trained, the strong adapter reduced
    assert runner.is_done(experiment, cells[1e-7]) and runner.is_done(experiment, cells[0.3])


def test_a_cell_trained_again_keeps_where_its_earlier_evaluations_ran(workspace, tmp_path, monkeypatch):
    """A lost work directory means the adapter is trained again and reads only the evaluations still
    owed; the result then says which machine made each evaluation and what trained the adapter before."""
    facts = str(workspace / "facts.yaml")
    path = write_config(workspace, tmp_path, grids=variant_grids(workspace, [{}, {"adapter_scale": 0.5}]))
    experiment = load_experiment(path)
    [cell] = experiment.cells
    for module in (runner, provenance):  # the evaluations' stamp and the file's header
        monkeypatch.setattr(module, "describe_machine", lambda: "machine A")
        monkeypatch.setattr(module, "now", lambda: "2026-01-01T00:00:00+00:00")
    runner.run_experiment(experiment, log=lambda line: None)
    first = runner.read_cell_result(experiment, cell)
    assert first["evaluation"][facts]["machine"] == "machine A" and "earlier_training" not in first

    shutil.rmtree(experiment.work / cell.name)  # the adapter is gone; one evaluation is owed
    del first["variants"]["adapter_scale=0.5"]
    runner.cell_result_path(experiment, cell).write_text(runner.result_text(first))
    for module in (runner, provenance):  # the evaluations' stamp and the file's header
        monkeypatch.setattr(module, "describe_machine", lambda: "machine B")
        monkeypatch.setattr(module, "now", lambda: "2026-01-02T00:00:00+00:00")
    runner.run_experiment(experiment, log=lambda line: None)
    second = runner.read_cell_result(experiment, cell)
    assert second["evaluation"][facts]["machine"] == "machine A"  # kept, from the first adapter
    assert second["variants"]["adapter_scale=0.5"]["evaluation"][facts]["machine"] == "machine B"
    assert second["created"] == first["created"] and second["machine"] == "machine B"
    [earlier] = second["earlier_training"]
    assert earlier["machine"] == "machine A" and earlier["final_loss"] == first["training"]["final_loss"]


def test_train_only_trains_every_cell_and_evaluates_nothing(workspace, tmp_path, monkeypatch, capsys):
    path = write_config(workspace, tmp_path, grids=variant_grids(workspace, [{}, {"step": 1}]))
    monkeypatch.setattr("imsm.evaluation.run.evaluate_task", lambda *a, **k: pytest.fail("evaluated in --train-only"))
    assert main(["experiment", path, "--train-only"]) == 0
    experiment = load_experiment(path)
    [cell] = experiment.cells
    assert (experiment.work / cell.name / "snapshots" / "step-000001").is_dir()
    assert runner.read_cell_result(experiment, cell) is None
    assert not (experiment.results / "original").exists()
    facts = str(workspace / "facts.yaml")
    capsys.readouterr()
    assert main(["experiment", path, "--dry-run"]) == 0
    plan = f"0 of 2 evaluations done; to evaluate: as trained on {facts}; [step=1] on {facts}"
    assert plan in capsys.readouterr().out


@pytest.mark.parametrize(
    ("variants", "fusion", "peft", "message"),
    [
        ([{"fusion": "imsm"}], "none", "lora", "variant fusion 'imsm' needs a gate trained that way"),
        ([{"adapter_scale": 0.5}], "none", "dora", "adapter_scale cannot scale a dora adapter"),
        ([{"step": 0}], "none", "lora", r"variants\[0\]: step must be a positive integer"),
        ([{"adapter_scale": -1}], "none", "lora", "adapter_scale must be a number >= 0"),
        ([{"lambda": 0.5}], "none", "lora", "unknown field 'lambda'"),
        ([{"intruders": 0.5}], "none", "ia3", "reduces vanilla lora adapters only, not ia3"),
        ([{"intruders": 0.5}], "none", "dora", "reduces vanilla lora adapters only, not dora"),
        ([{"intruders": 0.5, "adapter_scale": 0.5}], "none", "lora", "two mitigations"),
        ([{"intruders": 1.5}], "none", "lora", r"variants\[0\]: intruders: .* a number in \[0, 1\]"),
        ([], "none", "lora", "variants must be a non-empty list"),
    ],
)
def test_impossible_variants_are_problems_of_the_file(workspace, tmp_path, variants, fusion, peft, message):
    path = write_config(workspace, tmp_path, grids=variant_grids(workspace, variants, fusion, peft))
    with pytest.raises(IMSMError, match=message):
        load_experiment(path)


def test_a_snapshot_missing_from_a_finished_run_is_named_with_the_fix(workspace, tmp_path):
    path = write_config(workspace, tmp_path, grids=variant_grids(workspace, [{}]), original=[])
    runner.run_experiment(load_experiment(path), log=lambda line: None)
    later = write_config(workspace, tmp_path, grids=variant_grids(workspace, [{}, {"step": 1}]), original=[])
    experiment = load_experiment(later)
    assert experiment.cells[0].name == load_experiment(path).cells[0].name  # snapshots are not identity
    with pytest.raises(IMSMError, match="no snapshot at step 1 .* delete .* to retrain"):
        runner.run_experiment(experiment, log=lambda line: None)


def test_options_that_change_no_number_can_change_between_sessions(workspace, tmp_path):
    path = write_config(workspace, tmp_path, grids=variant_grids(workspace, [{}]), original=[])
    runner.check_results_directory(load_experiment(path))
    train = {"epochs": 1, "batch_size": 4, "micro_batch_size": 2, "learning_rate": 0.01, "dtype": "fp32"}
    later = write_config(
        workspace, tmp_path, grids=variant_grids(workspace, [{}]), original=[], train={**train, "checkpoint_every": 5}
    )
    runner.check_results_directory(load_experiment(later))  # accepted: checkpoints change no number
    other = write_config(
        workspace, tmp_path, grids=variant_grids(workspace, [{}]), original=[], train={**train, "learning_rate": 0.02}
    )
    with pytest.raises(IMSMError, match="learning_rate"):
        runner.check_results_directory(load_experiment(other))


def test_a_table_row_that_does_not_fit_its_columns_is_refused():
    from imsm.experiment.report.tables import markdown_table

    assert markdown_table(["a", "b"], [["1", "2"]]) == ["| a | b |", "|---|---|", "| 1 | 2 |"]
    with pytest.raises(ValueError, match="3 cells for 2 columns"):
        markdown_table(["a", "b"], [["1", "2", "3"]])


# The MRPC forgetting study's cells and variant keys as committed: a new variant field must leave
# every existing key, and so every cell's stored results, as they were.
FORGETTING_VARIANTS = {
    "none": [
        "adapter_scale=0.25",
        "adapter_scale=0.5",
        "adapter_scale=0.75",
        "fusion=mean",
        "intruders=0.5",
        "intruders=0.75",
        "step=125",
        "step=60",
    ],
    "imsm": ["fusion=none", "step=125", "step=60"],
    "mean": ["fusion=none", "step=125", "step=60"],
}


def test_the_forgetting_study_keeps_its_cells_keys_and_results(capsys):
    path = Path(__file__).resolve().parents[1] / "configs" / "forgetting.yaml"
    experiment = load_experiment(path)
    assert len(experiment.cells) == 9
    for cell in experiment.cells:
        assert sorted(cell.variants) == FORGETTING_VARIANTS[cell.config["fusion"]], cell.name
    assert main(["experiment", str(path), "--dry-run"]) == 0
    # The committed results keep every cell's key; issue 29 added peft's intruder reduction to the
    # vanilla adapters, whose evaluations are the only ones that may still be owed.
    out = capsys.readouterr().out
    assert "9 cells (9 done)" in out or "9 cells (3 to run, 6 done)" in out
    for line in out.splitlines():
        if "to evaluate:" in line:
            owed = line.split("to evaluate:")[1]
            assert "[intruders=" in owed and "[adapter_scale" not in owed and "[step" not in owed, line


@pytest.mark.parametrize(
    ("entry", "key"),
    [({"intruders": 0.5}, "intruders=0.5"), ({"intruders": 0.75, "step": 60}, "step=60,intruders=0.75")],
)
def test_an_intruders_variant_parses_and_round_trips(entry, key):
    problems = []
    (variant,) = parse_variants([entry], "grid", problems)
    assert not problems and variant.key == key and Variant.from_key(key) == variant
