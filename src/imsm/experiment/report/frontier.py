"""`imsm frontier`'s markdown report: an experiment's arms against Base, against each other and against the
λ line, section by section. The study it reports is read by `frontier_study`; its plots are drawn by
`frontier_plot`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from imsm.experiment.report.frontier_cells import (
    STRONG_T,
    difference_cells,
    learning_label,
    metric_description,
    score_header,
    seed_test_cells,
    signed,
    with_spread,
)
from imsm.experiment.report.frontier_compare import (
    columns_by_seed,
    compare_arms,
    compare_questions,
    comparisons,
    flips,
    score_of,
    seed_values,
)
from imsm.experiment.report.frontier_curve import curve_section
from imsm.experiment.report.frontier_gate import gate_section
from imsm.experiment.report.frontier_lambda import (
    frontier_rows,
    lambda_gaps,
    lambda_line,
    line_vanillas,
    unscaled_methods,
)
from imsm.experiment.report.frontier_line import BELOW, BEYOND, ON
from imsm.experiment.report.frontier_line_section import MATCHING, line_tests_section
from imsm.experiment.report.frontier_methods import training_options
from imsm.experiment.report.frontier_plot import PLOT_SUFFIXES, save_frontier_plot
from imsm.experiment.report.frontier_probes import pooled_cell, probe_tests_section
from imsm.experiment.report.frontier_study import (
    CHANCE_MARGIN,
    FORGETTING,
    POOL,
    POOLED,
    PROBE_SCORES,
    Arm,
    Point,
    Score,
    Study,
    length_label,
    pooled_columns,
)
from imsm.experiment.report.frontier_verdict import verdict_section
from imsm.experiment.report.grid import NATS
from imsm.experiment.report.tables import markdown_table, spread_text
from imsm.experiment.spec import GRID_KEYS
from imsm.tasks import get_task

# How the line's forgetting at an arm's target score was found (`frontier_line.matched_score`).
PLACE_NOTES = {ON: "", BEYOND: " (beyond)", BELOW: " (below)"}


def _probe_scores(study: Study, headline: bool) -> list[Score]:
    """Each probe's headline score (the curves), or its likelihood scores."""
    return [
        (probe.task, metric)
        for probe in study.probes
        for i, metric in enumerate(PROBE_SCORES.get(probe.kind, ()))
        if (i == 0) == headline
    ]


def _score_table(study: Study, groups: Mapping[tuple[Arm, int | None], Mapping[Any, Point]], scores: list[Score]):
    """One row per (arm, length): seeds, then mean ± std over seeds of each score; Base first."""
    rows = []
    if study.base is not None:
        base = study.scores(study.base)
        rows.append(["Base", "0", "–", *(spread_text([base[s]] if s in base else [], s[1], 1) for s in scores)])
    for (arm, length), points in groups.items():
        entries = [study.label(arm), length_label(length), str(len(points))]
        entries += [spread_text(list(seed_values(study, points, s).values()), s[1], len(points)) for s in scores]
        rows.append(entries)
    return markdown_table(["arm", "steps", "seeds", *(score_header(study, s) for s in scores)], rows)


def _training_options_text(study: Study) -> str:
    """The training options all cells share, then what each method sets otherwise."""
    experiment = study.experiment
    cells = [c for c in experiment.cells if str(c.config["task"]) == study.target]
    axes = [axis for grid in experiment.grids.values() for axis in grid if axis not in GRID_KEYS]
    axes += [key for options in experiment.method_options.values() for key in options]
    shared, own = training_options(cells, experiment.train, axes)
    text = f"shared training options `{json.dumps(shared)}`"
    return text + "".join(f"; {method}'s own `{json.dumps(options)}`" for method, options in own.items())


def settings_section(study: Study) -> list[str]:
    """What the numbers depend on, and which probes the pooled scores pool."""
    experiment = study.experiment
    finished = len({(p.arm.method, p.arm.fusion, p.arm.setting, p.seed) for p in study.points if p.arm.is_trained})
    lines = [
        f"Model `{experiment.model}`; target `{study.target}` scored by {metric_description(study)}; {finished} of "
        f"{sum(str(c.config['task']) == study.target for c in experiment.cells)} cells with results; seeds "
        f"{', '.join(map(str, study.seeds))}; {_training_options_text(study)}; evaluation "
        f"`{json.dumps(experiment.eval)}`.",
        "",
        "Scores in points (×100) except nats (KL, NLL, log-likelihood); mean ± sample std over seeds, seeds = "
        "how many seeds the row has, (n=k) where an entry has fewer. Pooled scores: every question of the "
        f"pooled probes weighted equally ({', '.join(study.pooled_tasks) or 'none'}). Forgetting = Base − arm "
        "on a pooled score (positive = forgotten).",
        "",
    ]
    rows = []
    for probe in study.probes:
        mc = probe.kind == "multiple_choice"
        margin = probe.margin
        rows.append(
            [
                probe.task,
                probe.kind,
                str(probe.questions) if probe.questions else "–",
                "–" if probe.base_accuracy is None else f"{100 * probe.base_accuracy:.1f}",
                f"{100 * probe.chance:.1f} ({probe.chance_source})" if mc and probe.chance is not None else "–",
                f"{100 * margin:.1f}" if mc and margin is not None else "–",
                pooled_cell(probe),
            ]
        )
    if rows:
        headers = ["probe", "kind", "questions", "Base accuracy", "chance", f"{CHANCE_MARGIN:g} SE", "pooled"]
        lines += [
            f"Probes (a multiple-choice probe is pooled when Base clears chance by {CHANCE_MARGIN:g} binomial "
            "standard errors of an accuracy at chance over its questions; a slice NAME@START, other questions "
            "of a probe, is held out of the pool):",
            "",
            *markdown_table(headers, rows),
            "",
        ]
    return lines


def curves_section(study: Study) -> list[str]:
    """Every arm at every length it was read at."""
    groups = study.groups()
    if not groups:
        return []
    headline = [(study.target, study.metric), (POOL, "accuracy"), (POOL, "gold_probability")]
    headline += _probe_scores(study, headline=True)
    likelihoods = _probe_scores(study, headline=False)
    lines = ["## Curves", "", *_score_table(study, groups, headline), ""]
    if likelihoods:
        lines += ["Likelihood scores (nats; gold log-likelihood: higher is better, NLL: lower):", ""]
        lines += [*_score_table(study, groups, likelihoods), ""]
    return lines


def posthoc_section(study: Study) -> list[str]:
    """Base, the free variants of the vanilla adapter and the trained arms, at the end of training."""
    arms = sorted((a for a in study.arms() if study.final(a)), key=lambda a: (a.is_trained, a.mixed or "", a.order))
    if not arms:
        return []
    groups = {(arm, study.final_length(arm)): study.final(arm) for arm in arms}
    scores = [(study.target, study.metric)]
    scores += [(kind, name) for name in POOLED for kind in (POOL, FORGETTING)]
    scores += [s for s in _probe_scores(study, headline=True) if get_task(s[0]).answer_type != "multiple_choice"]
    return ["## Post hoc, at the final length", "", *_score_table(study, groups, scores), ""]


def base_tests_section(study: Study) -> list[str]:
    """Every arm at every length against the base model, question by question, and its flips."""
    if study.base is None:
        return []
    base_pool = pooled_columns(study.base, study.pooled_tasks)
    base_target = study.base.questions.get(study.target)
    rows = []
    for (arm, length), points in study.groups().items():
        pooled = columns_by_seed(study, points, None)
        target = columns_by_seed(study, points, study.target)
        base = {s: base_target for s in target} if base_target else {}
        # Learning positive: arm − Base, or Base − arm (the gain) for a lower-is-better target score.
        pair = (base, target) if study.lower_is_better else (target, base)
        tests = [compare_questions(*pair, study.metric)]
        tests += [compare_questions(pooled, {s: base_pool for s in pooled} if base_pool else {}, n) for n in POOLED]
        used = {test.seeds for test in tests if test.seeds}
        # With partial results the target and the pool can rest on different seeds: then both are shown.
        seeds = str(used.pop()) if len(used) == 1 else " / ".join(str(t.seeds) for t in tests[:2]) if used else "–"
        entries = [study.label(arm), length_label(length), seeds]
        entries.append(" / ".join(str(test.test.n) if test.seeds else "–" for test in tests[:2]))
        for test, name in zip(tests, [study.metric, *POOLED], strict=True):
            entries += difference_cells(test, name)
        changed = [flips(columns, base_pool) for columns in pooled.values()] if base_pool else []
        entries += [f"{sum(c[i] for c in changed) / len(changed):.1f}" if changed else "–" for i in (0, 1)]
        rows.append(entries)
    if not rows:
        return []
    target = f"gain {study.target} (Base − arm)" if study.lower_is_better else f"Δ {study.target}"
    headers = ["arm", "steps", "seeds", "questions (target / pooled)", f"{target} ± SE", "t"]
    headers += ["Δ pooled accuracy ± SE", "t", "Δ pooled gold prob. ± SE", "t", "right → wrong", "wrong → right"]
    return [
        "## Against Base, question by question",
        "",
        "Arm − Base in points (negative on the probes = forgotten), each question averaged over seeds "
        "first (seeds: target / pooled where they differ); SE = standard error of the mean "
        f"difference over questions; **bold** t: |t| ≥ {STRONG_T:g}. Flips: pooled questions Base answers "
        "right and the arm wrong (and the reverse), mean over seeds. Question by question says whether a "
        "difference holds across questions for these adapters, not across other seeds."
        + (
            f" The target's {study.metric} is lower-is-better: its column is Base − arm in nats (positive = learned)."
            if study.lower_is_better
            else ""
        ),
        "",
        *markdown_table(headers, rows),
        "",
    ]


def between_arms_section(study: Study) -> list[str]:
    """Arms against each other at the same length (`comparisons`): question by question and by seed."""
    rows = []
    groups = study.groups()
    for arm, other, length in comparisons(study):
        treated, control = groups[(arm, length)], groups[(other, length)]
        held_out = [(probe.task, n) for probe in study.held_out for n in POOLED]
        for task, name in [(study.target, study.metric), *((None, n) for n in POOLED), *held_out]:
            score = score_of(study, task, name)
            by_question, by_seed = compare_arms(study, treated, control, task, name)
            if (task, name) in held_out and not by_question.seeds and not by_seed.n:
                continue  # a held-out slice one of the arms is not read on (a tuned branch alone)
            difference, t = difference_cells(by_question, name)
            rows.append(
                [
                    f"{study.label(arm)} − {study.label(other)}",
                    length_label(length),
                    score_header(study, score),
                    f"{by_question.test.n} × {by_question.seeds}" if by_question.seeds else "–",
                    difference,
                    t,
                    str(by_seed.n),
                    "–" if math.isnan(by_seed.mean_difference) else signed(name, by_seed.mean_difference),
                    *seed_test_cells(by_seed),
                ]
            )
    if not rows:
        return []
    headers = ["comparison", "steps", "score", "questions × seeds", "Δ ± SE", "t", "seeds", "Δ seed means", "t", "p"]
    gains = study.lower_is_better
    return [
        "## Between arms, at the same length",
        "",
        "Question by question (each question averaged over the seeds both arms have; questions × seeds "
        f"says how many of each; **bold** t: |t| ≥ {STRONG_T:g}), then the seed-level paired t-test of the "
        "arms' scores: seeds = the pairs it has (the two arms trained with the same seed), Δ seed means = "
        "the mean of their differences, two-sided p."
        + (" Held-out probes (NAME@START) follow the pooled scores." if study.held_out else "")
        + (" The target's row compares gains (Base − arm): positive = the first arm learned more." if gains else ""),
        "",
        *markdown_table(headers, rows),
        "",
    ]


def _line_rows(study: Study, digits: int) -> list[list[str]]:
    """The rows of the λ line of each vanilla adapter that has one (Base's row heads each), by λ."""
    rows = []
    for vanilla in line_vanillas(study):  # none until a vanilla adapter's results come
        lines_by_score = {name: lambda_line(study, name, vanilla) for name in POOLED}
        for lam in sorted({lam for line in lines_by_score.values() for lam, _ in line}):
            entries = {name: dict(lines_by_score[name]).get(lam) for name in POOLED}
            first = next(p for p in entries.values() if p is not None)
            rows.append(
                [
                    f"{lam:g}",
                    first.label,
                    str(first.seeds),
                    f"{first.target:.{digits}f}",
                    *(f"{p.forgetting:.1f}" if p else "–" for p in entries.values()),
                ]
            )
    return rows


def _unscaled_note(study: Study) -> list[str]:
    """One line per method whose arms have no λ line (DoRA's), or nothing."""
    return [
        f"{method}'s arms have no λ line (adapter_scale cannot scale a {method} adapter), so they are compared "
        f"with {method}'s free baselines directly, under Between arms, and are not placed here."
        for method in unscaled_methods(study)
    ] + ([""] if unscaled_methods(study) else [])


def frontier_section(study: Study) -> list[str]:
    """The λ line, then each trained arm's point against it: negative = forgets less than scaling the
    vanilla adapter to the same target score."""
    digits = 3 if study.metric in NATS else 1
    line_rows = _line_rows(study, digits)
    rows_by_score = {name: frontier_rows(study, name) for name in POOLED}
    heading = ["## Against the λ frontier", "", *_unscaled_note(study)]
    if not line_rows:
        trained = [arm for arm in study.arms() if arm.is_trained]
        if trained and not any(study.has_lambda_line(arm) for arm in trained):
            return heading  # every method's arms are compared under Between arms; the note says so
        return [
            *heading,
            "Not computable yet: it needs Base on the target and on pooled probes, and the vanilla arm's results.",
            "",
        ]
    target = learning_label(study)
    lines = [
        *heading,
        f"The λ line: Base (λ = 0), the vanilla adapter scaled by λ, as trained (λ = 1); seed means, {target}:",
        "",
        *markdown_table(["λ", "arm", "seeds", target, "forgetting (accuracy)", "forgetting (gold prob.)"], line_rows),
        "",
    ]
    gaps = list(dict.fromkeys(label for name in POOLED for label in lambda_gaps(study, name)))
    if gaps:
        lines += [f"Left out of the line until their results are in: {', '.join(gaps)}.", ""]
    keyed = {name: {(p.label, p.length): (p, at) for p, at in rows_by_score[name]} for name in POOLED}
    order = list(dict.fromkeys(key for name in POOLED for key in keyed[name]))
    rows = []
    for key in order:
        entries = [keyed[name].get(key) for name in POOLED]
        first = next(e[0] for e in entries if e is not None)
        row = [
            first.label,
            length_label(first.length),
            str(first.seeds),
            with_spread(first.target, first.target_std, first.seeds, digits),
        ]
        for entry in entries:
            if entry is None:
                row += ["–", "–", "–"]
                continue
            point, at = entry
            row.append(with_spread(point.forgetting, point.forgetting_std, point.seeds))
            if at is None:
                row += ["–", "–"]
                continue
            forgetting, place = at  # rounded first, so that a point on the line reads +0.0, not -0.0
            row += [f"{forgetting:.1f}{PLACE_NOTES[place]}", f"{round(point.forgetting - forgetting, 1) + 0.0:+.1f}"]
        rows.append(row)
    if not rows:
        return lines
    headers = ["arm", "steps", "seeds", target, "forgetting (acc.)", "λ line at this target", "Δ (acc.)"]
    headers += ["forgetting (gold prob.)", "λ line at this target", "Δ (gold prob.)"]
    lines += [
        "Descriptive: each arm's seed mean against the line of seed means of its vanilla adapter, at the "
        f"arm's target score. {MATCHING} Δ = the arm's forgetting − the line's: negative forgets less than "
        "the free baseline at the same gain. The seed-by-seed test below is the one to draw conclusions from.",
        "",
        *markdown_table(headers, rows),
        "",
    ]
    return lines + line_tests_section(study)


def render_frontier(
    study: Study, plots: Path | None, link_base: Path | None = None, commands=None, plot_name: str = "frontier"
) -> str:
    """The markdown report; writes PLOT_NAME.png and PLOT_NAME-gold.png into `plots` when given."""
    lines = [f"# Learning and forgetting: `{study.experiment.name}`", ""]
    if commands:
        lines += ["Made with:", "", "```bash", *commands, "```", ""]
    lines += settings_section(study)
    lines += verdict_section(study)
    lines += curves_section(study)
    lines += posthoc_section(study)
    lines += base_tests_section(study)
    lines += probe_tests_section(study)
    lines += between_arms_section(study)
    lines += frontier_section(study)
    if plots is not None:
        for name, suffix in PLOT_SUFFIXES.items():
            path = plots / f"{plot_name}{suffix}.png"
            if save_frontier_plot(study, path, name):
                shown = path if link_base is None else Path(_relative(path, link_base))
                lines += [f"![{path.stem}]({shown.as_posix()})", ""]
    lines += curve_section(study)
    lines += gate_section(study)
    if study.missing:
        shown = study.missing[:20]
        lines += [f"Missing ({len(study.missing)}): " + "; ".join(shown)]
        lines += ["" if len(study.missing) <= 20 else f"... and {len(study.missing) - 20} more", ""]
    return "\n".join(lines).rstrip() + "\n"


def _relative(path: Path, base: Path) -> str:
    return os.path.relpath(path.resolve(), base.resolve())
