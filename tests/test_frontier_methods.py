"""`imsm frontier` on a study whose grids train more than one peft method: LoRA and DoRA, each
vanilla and with IMSM, in one experiment file, as the GSM8K study trains them.

adapter_scale cannot scale a DoRA adapter, so only LoRA has a λ line; DoRA's one free baseline is its
untrained 50/50 mix. The numbers follow test_frontier.py's synthetic study (an arm answers the target's
first `target × 20` questions right and loses `lost` of Base's 56 right pooled answers of 80), and
DoRA's differ from LoRA's, so that an arm compared with the other method's would show.
"""

from __future__ import annotations

import json

import pytest

from imsm.errors import IMSMError
from imsm.experiment.report.frontier import render_frontier
from imsm.experiment.report.frontier_lambda import frontier_rows, lambda_line, line_tests
from imsm.experiment.report.frontier_study import collect_study
from imsm.experiment.spec import load_experiment
from test_frontier import PLAN, PROBES, numbers, row, section, tables, write_experiment, write_results

# DoRA's (trained fusion, variant key) -> (target accuracy, pooled right answers lost); LoRA's are PLAN's.
DORA_PLAN = {
    ("none", ""): (0.85, 20),
    ("none", "step=10"): (0.65, 10),
    ("none", "fusion=mean"): (0.50, 2),
    ("imsm", ""): (0.80, 6),
    ("imsm", "step=10"): (0.55, 3),
}
MIX = {"fusion": "mean", "label": "untrained mix"}


def grid(peft: str, fusions: list[str], variants: list[dict]) -> dict:
    return {
        "task": ["mrpc"],
        "peft": [peft],
        "fusion": fusions,
        "seed": [0, 1, 2],
        "evaluate": ["target", *PROBES],
        "variants": variants,
    }


def methods_experiment(tmp_path, baselines: list[dict], **changes) -> str:
    """LoRA and DoRA trained vanilla and with IMSM; LoRA's vanilla adapter read at three λ and mixed
    50/50 untrained, DoRA's mixed only (a scale of it would be refused)."""
    scales = [{"adapter_scale": s} for s in (0.25, 0.5, 0.75)]
    grids = {
        "curves": {**grid("lora", ["none", "imsm"], [{}, {"step": 10}]), "peft": ["lora", "dora"]},
        "posthoc-lora": grid("lora", ["none"], [*scales, {"fusion": "mean"}]),
        "posthoc-dora": grid("dora", ["none"], [{"fusion": "mean"}]),
    }
    frontier = {"labels": {"none": "{method}", "imsm": "IMSM-{method}"}, "baselines": baselines}
    return write_experiment(tmp_path, grids=grids, frontier=frontier, **changes)


def write_method_results(path: str) -> None:
    """The original rows and every cell's result.json, LoRA's cells from PLAN and DoRA's from DORA_PLAN."""
    write_results(path, plan_of=lambda cell: DORA_PLAN if cell.config["peft"] == "dora" else PLAN, seed_spread=False)


def methods_study(tmp_path, baselines: list[dict] | None = None, **changes):
    path = methods_experiment(tmp_path, [{"adapter_scale": 0.5}, MIX] if baselines is None else baselines, **changes)
    write_method_results(path)
    return collect_study(load_experiment(path))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return methods_study(tmp_path_factory.mktemp("frontier-methods"))


@pytest.fixture(scope="module")
def report(study):
    return render_frontier(study, None)


def test_the_peft_method_names_an_arm_once(study):
    labels = {study.label(arm) for arm in study.arms()}
    assert {"LoRA", "IMSM-LoRA", "DoRA", "IMSM-DoRA", "LoRA λ=0.5"} <= labels
    assert not any("[" in label for label in labels)  # no "[peft=dora]", no per-method learning rate


def test_a_baseline_both_methods_are_read_as_is_named_after_each(study):
    mixes = {study.label(arm) for arm in study.arms() if arm.mixed == "mean"}
    assert mixes == {"LoRA, untrained mix", "DoRA, untrained mix"}
    assert len({study.label(arm) for arm in study.arms()}) == len(study.arms())  # no two arms share a label


def test_one_method_s_trained_arms_are_listed_together_lora_first(study):
    trained = [study.label(arm) for arm in study.arms() if arm.is_trained]
    assert trained == ["LoRA", "IMSM-LoRA", "DoRA", "IMSM-DoRA"]  # not LoRA, DoRA, IMSM-LoRA, IMSM-DoRA


def test_a_baseline_label_may_name_the_method(tmp_path):
    study = methods_study(tmp_path, [{"fusion": "mean", "label": "{method} mixed, untrained"}])
    mixes = {study.label(arm) for arm in study.arms() if arm.mixed == "mean"}
    assert mixes == {"LoRA mixed, untrained", "DoRA mixed, untrained"}


def test_a_baseline_label_naming_another_placeholder_is_refused(tmp_path):
    path = methods_experiment(tmp_path, [{"fusion": "mean", "label": "{peft} mix"}])
    with pytest.raises(IMSMError, match=r"frontier.baselines\[0\].label: '\{peft\} mix' names a placeholder other"):
        load_experiment(path)


def test_a_trained_label_both_methods_would_share_names_the_method(tmp_path):
    labels = {"none": "{method}", "imsm": "Gated"}
    path = methods_experiment(tmp_path, [MIX])
    config = json.loads(open(path).read())
    open(path, "w").write(json.dumps({**config, "frontier": {**config["frontier"], "labels": labels}}))
    write_method_results(path)
    study = collect_study(load_experiment(path))
    assert {study.label(a) for a in study.arms() if a.fusion == "imsm"} == {"LoRA, Gated", "DoRA, Gated"}


def test_a_baseline_of_one_method_keeps_its_label_as_written(tmp_path):
    study = methods_study(tmp_path, [{"adapter_scale": 0.5, "label": "half"}, MIX])
    assert "half" in {study.label(arm) for arm in study.arms()}  # only LoRA's adapter is scaled


def test_each_gated_arm_is_compared_within_its_own_method(report):
    compared = {r["comparison"] for r in tables(section(report, "Between arms"))[0]}
    assert compared == {
        "IMSM-LoRA − LoRA",
        "IMSM-LoRA − LoRA λ=0.5",
        "IMSM-LoRA − LoRA, untrained mix",
        "IMSM-DoRA − DoRA",
        "IMSM-DoRA − DoRA, untrained mix",
    }
    between = section(report, "Between arms")
    # IMSM-DoRA loses 6 answers where DoRA loses 20 and DoRA's mix 2: 17.5 points kept, 5 more lost.
    vanilla = row(between, comparison="IMSM-DoRA − DoRA", steps="40", score="pooled accuracy")
    mix = row(between, comparison="IMSM-DoRA − DoRA, untrained mix", steps="40", score="pooled accuracy")
    assert numbers(vanilla["Δ ± SE"])[0] == 17.5 and numbers(mix["Δ ± SE"])[0] == -5.0
    early = row(between, comparison="IMSM-DoRA − DoRA", steps="10", score="pooled accuracy")
    assert numbers(early["Δ ± SE"])[0] == 8.75  # 3 lost against 10


def test_only_the_method_with_a_lambda_line_is_placed_on_it(study, report):
    placed = {p.label for name in ("accuracy", "gold_probability") for p, _ in frontier_rows(study, name)}
    assert placed == {"LoRA", "IMSM-LoRA", "LoRA, untrained mix"}
    assert {study.label(t.arm) for t in line_tests(study, "accuracy")} == placed
    line = lambda_line(study, "accuracy")
    assert [(lam, p.label) for lam, p in line][1:] == [(0.25, "LoRA λ=0.25"), (0.5, "LoRA λ=0.5"),
                                                         (0.75, "LoRA λ=0.75"), (1.0, "LoRA")]  # fmt: skip
    frontier = section(report, "Against the λ frontier")
    assert "DoRA" not in "\n".join(line for line in frontier.splitlines() if line.startswith("|"))
    assert "DoRA's arms have no λ line (adapter_scale cannot scale a DoRA adapter)" in frontier
    assert numbers(row(frontier, table=1, arm="IMSM-LoRA", steps="40")["Δ (acc.)"]) == [-5.0]


def test_the_report_shows_every_section_for_both_methods(study, report, tmp_path):
    for heading in ("Curves", "Post hoc", "Against Base", "Each probe against Base", "Between arms"):
        arms = {r["arm"] if "arm" in r else r["comparison"] for r in tables(section(report, heading))[0]}
        assert any("DoRA" in arm for arm in arms) and any("LoRA" in arm for arm in arms), heading
    assert "## Against the λ frontier" in report
    assert "12 of 12 cells with results" in report  # one cell per method, fusion and seed
    posthoc = {r["arm"] for r in tables(section(report, "Post hoc"))[0]}
    assert {"DoRA", "DoRA, untrained mix", "LoRA, untrained mix", "LoRA λ=0.5"} <= posthoc
    assert "Missing" not in report
    render_frontier(study, tmp_path)  # the plots: LoRA's line and the arms placed on it
    assert (tmp_path / "frontier.png").stat().st_size > 1000


def test_an_option_set_per_method_does_not_split_its_arms(tmp_path):
    # DoRA trains at its own rate: constant within each method, so it tells no two arms apart.
    study = methods_study(tmp_path, method_options={"dora": {"learning_rate": 3e-3}})
    assert {a.setting for a in study.arms()} == {""}
    assert {study.label(a) for a in study.arms() if a.is_trained} == {"LoRA", "IMSM-LoRA", "DoRA", "IMSM-DoRA"}


def test_the_settings_line_names_what_each_method_sets_otherwise(tmp_path):
    train = {"batch_size": 4, "learning_rate": 1e-3}
    study = methods_study(tmp_path, train=train, method_options={"dora": {"learning_rate": 3e-3}})
    line = render_frontier(study, None).split("shared training options")[1].split("\n")[0]
    shared = json.loads(line.split("`")[1])
    assert "learning_rate" not in shared and shared["batch_size"] == 4  # LoRA's rate is no longer shared
    assert 'LoRA\'s own `{"learning_rate": 0.001}`' in line and 'DoRA\'s own `{"learning_rate": 0.003}`' in line


def test_an_option_varying_within_one_method_still_splits_its_arms(tmp_path):
    path = methods_experiment(tmp_path, [MIX])
    config = json.loads(open(path).read())
    config["grids"]["dora-rates"] = {**grid("dora", ["none"], [{}]), "learning_rate": [3e-3]}
    open(path, "w").write(json.dumps(config))
    write_method_results(path)
    study = collect_study(load_experiment(path))
    trained = {study.label(a) for a in study.arms() if a.is_trained}
    # DoRA's two rates split DoRA's arms; LoRA trains at one rate, so its labels stay as they are.
    assert {"LoRA", "IMSM-LoRA", "DoRA [learning_rate=0.003]"} <= trained
    assert not any(label.startswith("LoRA [") or label.startswith("IMSM-LoRA [") for label in trained)
    assert any(label.startswith("IMSM-DoRA [learning_rate=") for label in trained)


def test_each_method_with_a_lambda_line_gets_its_own_in_the_plot(tmp_path, monkeypatch):
    """LoRA and (IA)3 can both be scaled: each arm is set against its own method's line, and the plot
    draws both lines, named by method, rather than the first alone."""
    from imsm.experiment.report import frontier_plot

    scales = [{"adapter_scale": s} for s in (0.25, 0.5, 0.75)]
    grids = {
        "curves": {**grid("lora", ["none", "imsm"], [{}, {"step": 10}]), "peft": ["lora", "ia3"]},
        "posthoc": {**grid("lora", ["none"], [*scales, {"fusion": "mean"}]), "peft": ["lora", "ia3"]},
    }
    frontier = {"labels": {"none": "{method}", "imsm": "IMSM-{method}"}, "baselines": [MIX]}
    path = write_experiment(tmp_path, grids=grids, frontier=frontier)
    write_method_results(path)
    study = collect_study(load_experiment(path))
    drawn = []
    real = frontier_plot._draw_lambda_line
    monkeypatch.setattr(frontier_plot, "_draw_lambda_line", lambda *a: drawn.append((a[3], len(a[1]))) or real(*a))
    assert frontier_plot.save_frontier_plot(study, tmp_path / "plot.png")
    assert drawn == [("LoRA scaled by λ (free)", 5), ("(IA)3 scaled by λ (free)", 5)]  # Base, 3 λ, as trained


def test_a_single_method_s_plot_keeps_its_one_line_as_before(study, tmp_path, monkeypatch):
    from imsm.experiment.report import frontier_plot

    drawn = []
    real = frontier_plot._draw_lambda_line
    monkeypatch.setattr(frontier_plot, "_draw_lambda_line", lambda *a: drawn.append(a[3]) or real(*a))
    frontier_plot.save_frontier_plot(study, tmp_path / "plot.png")
    assert drawn == ["vanilla scaled by λ (free)"]  # DoRA has no line, so LoRA's is the only one


def plot_legend(study, tmp_path, monkeypatch) -> list[str]:
    """The legend of `save_frontier_plot`'s figure: what it draws, by name."""
    import matplotlib.pyplot as plt

    from imsm.experiment.report import frontier_plot

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure the plot would close
    assert frontier_plot.save_frontier_plot(study, tmp_path / "plot.png")
    return figures[0].axes[0].get_legend_handles_labels()[1]


def test_a_method_without_a_lambda_line_is_drawn_in_the_plot_all_the_same(study, tmp_path, monkeypatch):
    """DoRA's arms are placed on no line, but the plot of learning against forgetting shows them,
    beside LoRA's line and arms, with Base as their reference."""
    legend = plot_legend(study, tmp_path, monkeypatch)
    assert {"Base", "vanilla scaled by λ (free)", "DoRA, untrained mix", "LoRA, untrained mix"} <= set(legend)
    assert "DoRA (10 → 40 steps)" in legend and "IMSM-DoRA (10 → 40 steps)" in legend
    assert "LoRA (10 → 40 steps)" in legend


def test_a_study_of_methods_without_a_lambda_line_shows_no_empty_line(tmp_path, monkeypatch):
    """A DoRA-only study (the paper's Table 3) has no λ line at all: the report says so once, shows no
    table of Base alone, and the plot draws Base and DoRA's arms with no line."""
    path = methods_experiment(tmp_path, [MIX])
    config = json.loads(open(path).read())
    config["grids"] = {
        "curves": {**grid("dora", ["none", "imsm"], [{}, {"step": 10}])},
        "posthoc-dora": grid("dora", ["none"], [{"fusion": "mean"}]),
    }
    open(path, "w").write(json.dumps(config))
    write_method_results(path)
    study = collect_study(load_experiment(path))
    frontier = section(render_frontier(study, None), "Against the λ frontier")
    assert "DoRA's arms have no λ line" in frontier
    assert "The λ line:" not in frontier and "Not computable yet" not in frontier and "|" not in frontier
    legend = plot_legend(study, tmp_path, monkeypatch)
    assert not any("scaled by λ" in label for label in legend)
    assert {"Base", "DoRA (10 → 40 steps)", "IMSM-DoRA (10 → 40 steps)", "untrained mix"} <= set(legend)


def test_each_trained_arm_read_at_several_lengths_is_joined_to_base_where_its_training_began(
    study, tmp_path, monkeypatch
):
    """The training curve the report matches along starts at Base (step 0): the plot draws that first
    segment, dotted, for every trained arm with snapshots, and none for a free baseline or a tuned branch."""
    import matplotlib.pyplot as plt

    from imsm.experiment.report import frontier_plot

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    assert frontier_plot.save_frontier_plot(study, tmp_path / "plot.png")
    axis = figures[0].axes[0]
    base = next(line for line in axis.get_lines() if line.get_label() == "Base")
    dotted = [line for line in axis.get_lines() if line.get_gid() == frontier_plot.FROM_BASE]
    starts = {(line.get_xdata()[0], line.get_ydata()[0]) for line in dotted}
    assert starts == {(base.get_xdata()[0], base.get_ydata()[0])}
    # LoRA, IMSM-LoRA, DoRA, IMSM-DoRA: each read after 10 and 40 steps, each with its own segment.
    assert len(dotted) == 4
    drawn = {label: line for line, label in zip(*axis.get_legend_handles_labels(), strict=True)}
    firsts = {(line.get_xdata()[1], line.get_ydata()[1]) for line in dotted}
    for label in ("LoRA (10 → 40 steps)", "DoRA (10 → 40 steps)"):
        line = drawn[label].lines[0]
        assert (line.get_xdata()[0], line.get_ydata()[0]) in firsts
