"""`imsm verdicts`: several studies' gated arms in one table, each number the one its study's `imsm
frontier` verdict computes, signed so that + favours the gated arm; on the synthetic studies of
test_frontier.py (one method, IMSM-LoRA's gate weights; a held-out slice) and test_frontier_methods.py
(LoRA and DoRA, DoRA with no λ line)."""

from __future__ import annotations

import json

import pytest

from imsm.cli import main
from imsm.experiment import runner
from imsm.experiment.report.across_targets import HEADERS, render_verdicts, study_rows
from imsm.experiment.report.frontier import render_frontier
from imsm.experiment.report.frontier_study import collect_study
from imsm.experiment.spec import load_experiment
from test_frontier import HELD_OUT, numbers, row, section, tables, write_held_out_study, write_mechanism_study
from test_frontier_methods import methods_study

GOLD = "pooled gold prob."
KEPT, LINE, CURVE, MIX = HEADERS[4], HEADERS[6], HEADERS[7], HEADERS[8]


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    mechanism = collect_study(load_experiment(write_mechanism_study(tmp_path_factory.mktemp("verdicts-a"))))
    return [mechanism, methods_study(tmp_path_factory.mktemp("verdicts-b"))]


def rows_of(study) -> list[dict[str, str]]:
    return [dict(zip(HEADERS, r, strict=True)) for r in study_rows(study)]


def test_every_gated_arm_of_every_study_has_one_row_in_the_studies_order(studies):
    table = tables(render_verdicts(studies, ["imsm verdicts ..."]))[0]
    arms = [r["gated arm − vanilla"] for r in table]
    assert arms[:2] == ["IMSM-LoRA − LoRA", "IMSM-mean − LoRA"]
    assert "IMSM-DoRA − DoRA" in arms[2:] and "IMSM-LoRA − LoRA" in arms[2:]
    assert len(arms) == len(study_rows(studies[0])) + len(study_rows(studies[1]))


def negated(cell: str) -> list[float]:
    """A line test's "Δ ± SE [low, high]" read with the other sign: [−Δ, SE, −high, −low]."""
    mean, error, low, high = numbers(cell)
    return [-mean, error, -high, -low]


@pytest.mark.parametrize("which", [0, 1])
def test_each_cell_is_the_frontier_verdicts_number_with_the_gated_arm_s_sign(studies, which):
    study = studies[which]
    verdict = section(render_frontier(study, None), "Verdict")
    for mine in rows_of(study):
        arm = mine["gated arm − vanilla"].split(" − ")[0]
        summary = row(verdict, comparison=mine["gated arm − vanilla"])
        target = next(h for h in summary if h.startswith("Δ mrpc"))
        assert mine[HEADERS[3]].startswith(summary[target] + " mrpc")
        assert mine[KEPT] == f"{summary['Δ pooled gold prob. ± SE']} (p {summary['p (gold prob., by seed)']})"
        assert mine["seeds"] == summary["seeds"]
        line = (
            row(verdict, table=1, arm=arm, score=GOLD)["Δ − control ± SE [95%]"]
            if study.has_lambda_line(next(a for a in study.arms() if study.label(a) == arm))
            else None
        )
        if line is None:
            assert mine[LINE] == "no λ line"
        else:
            assert numbers(mine[LINE]) == pytest.approx(negated(line))
        curve = row(verdict, table=2, arm=arm, score=GOLD)["Δ − control ± SE [95%]"]
        assert numbers(mine[CURVE]) == pytest.approx(negated(curve))
        [mix] = [
            r for r in tables(verdict)[0] if r["comparison"].startswith(f"{arm} − ") and "untrained" in r["comparison"]
        ]
        assert mine[MIX] == mix["Δ pooled gold prob. ± SE"]


def test_a_kept_cell_is_signed_for_the_gated_arm_and_the_gate_is_read_as_the_verdict_reads_it(studies):
    first = {r["gated arm − vanilla"]: r for r in rows_of(studies[0])}
    # IMSM-LoRA forgets 2.5 points of gold probability fewer than the λ line at its gain: + here.
    assert numbers(first["IMSM-LoRA − LoRA"][LINE])[0] == pytest.approx(2.5)
    assert first["IMSM-LoRA − LoRA"][HEADERS[9]] == "0.200 (0.000) / 0.600 (0.100)"
    assert first["IMSM-mean − LoRA"][HEADERS[9]] == "0.5 fixed"


def test_a_held_out_slice_is_compared_as_the_verdict_compares_it(tmp_path):
    study = collect_study(load_experiment(write_held_out_study(tmp_path)))
    verdict = section(render_frontier(study, None), "Verdict")
    for mine in rows_of(study):
        summary = row(verdict, comparison=mine["gated arm − vanilla"])
        assert mine[HEADERS[5]] == f"{HELD_OUT} {summary[f'Δ {HELD_OUT} gold prob. ± SE (held out)']}"


def test_the_command_writes_the_table_with_the_commands_that_made_it(tmp_path, capsys):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first, second = write_mechanism_study(tmp_path / "a"), write_held_out_study(tmp_path / "b")
    output = tmp_path / "out" / "verdicts.md"
    assert main(["verdicts", "--study", first, "--study", second, "--output", str(output)]) == 0
    text = output.read_text()
    assert f"imsm verdicts --study {first} --study {second} --output {output}" in text
    assert f"imsm experiment {first}" in text and len(tables(text)[0]) == 4
    assert main(["verdicts", "--output", str(output)]) == 2
    assert main(["verdicts", "--study", str(tmp_path / "missing.yaml")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "--study" in errors[0] and "missing.yaml" in errors[1]


def test_what_a_study_still_owes_counts_cells_not_run_apart_from_readings_of_cells_under_way(tmp_path):
    path = write_mechanism_study(tmp_path)
    experiment = load_experiment(path)
    gated = [c for c in experiment.cells if c.config["fusion"] == "imsm"]
    runner.cell_result_path(experiment, gated[0]).unlink()
    file = runner.cell_result_path(experiment, gated[1])
    result = json.loads(file.read_text())
    del result["variants"]["fusion=none"]  # its tuned branch alone, still to be read on 3 tasks
    file.write_text(runner.result_text(result))
    text = render_verdicts([collect_study(load_experiment(path))], [])
    assert text.rstrip().endswith(": 1 cell not run, 1 reading owed by cells under way.")
