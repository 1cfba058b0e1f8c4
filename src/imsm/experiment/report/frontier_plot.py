"""The plot of `imsm frontier`: a study's target score against its forgetting, the trained arms beside
the λ line."""

from __future__ import annotations

from pathlib import Path

from imsm.atomic_write import atomic_path
from imsm.experiment.report.frontier_cells import learning_label
from imsm.experiment.report.frontier_lambda import (
    ALONE,
    BASELINE,
    TRAINED,
    FrontierPoint,
    frontier_rows,
    lambda_line,
    line_vanillas,
    unlined_points,
)
from imsm.experiment.report.frontier_study import Study, length_label
from imsm.experiment.report.grid import UNSCALED

# Pooled score -> the suffix of its plot's file name, after the report's own name (frontier.md:
# frontier.png, frontier-gold.png), so two reports in one folder keep their own plots.
PLOT_SUFFIXES = {"accuracy": "", "gold_probability": "-gold"}


# The λ lines' colours: grays, so the trained arms (matplotlib's colour cycle) stand out from them.
LINE_COLOURS = ("gray", "darkgray", "dimgray", "silver")

FROM_BASE = "from Base"  # the id of the segment from Base to a trained arm's first length


def _draw_lambda_line(axis, line, colour: str, label: str) -> None:
    """One method's λ line, dashed, each point marked with its λ."""
    points = [p for _, p in line]
    axis.errorbar(
        [p.forgetting for p in points],
        [p.target for p in points],
        xerr=[p.forgetting_std for p in points],
        yerr=[p.target_std for p in points],
        fmt="--o",
        color=colour,
        capsize=2,
        label=label,
    )
    for lam, point in line:
        axis.annotate(f"λ={lam:g}", (point.forgetting, point.target), xytext=(5, -11), textcoords="offset points")


def _draw_arm(axis, label: str, curve: list[FrontierPoint], base: FrontierPoint | None) -> None:
    """One arm over its lengths, arrows in training order; a trained arm read at several lengths is joined
    to Base by a dotted segment, where its training started (the training curve `frontier_curve` reads)."""
    mix, alone = curve[0].kind == BASELINE, curve[0].kind == ALONE
    drawn = axis.errorbar(
        [p.forgetting for p in curve],
        [p.target for p in curve],
        xerr=[p.forgetting_std for p in curve],
        yerr=[p.target_std for p in curve],
        fmt="s" if mix else "v" if alone else "-o",
        capsize=2,
        markersize=7 if mix or alone else 5,
        label=label + ("" if len(curve) == 1 else f" ({' → '.join(length_label(p.length) for p in curve)} steps)"),
    )
    color = drawn.lines[0].get_color()
    if base is not None and len(curve) > 1 and curve[0].kind == TRAINED:
        first = curve[0]
        segment = ([base.forgetting, first.forgetting], [base.target, first.target])
        axis.plot(*segment, ":", color=color, lw=1.2, gid=FROM_BASE)
    for point in curve if len(curve) > 1 else []:  # each length's step count beside its point
        offset = {"xytext": (-4, 6), "textcoords": "offset points", "ha": "right"}
        axis.annotate(length_label(point.length), (point.forgetting, point.target), fontsize=7, color=color, **offset)
    for before, after in zip(curve, curve[1:], strict=False):  # training order
        axis.annotate(
            "",
            xy=(after.forgetting, after.target),
            xytext=(before.forgetting, before.target),
            arrowprops={"arrowstyle": "->", "color": color, "lw": 1.2},
        )


def save_frontier_plot(study: Study, path: Path, name: str = "accuracy") -> bool:
    """Target score (its gain Base − arm where lower is better) against forgetting of the pooled
    `name`: the λ line of each method that has one, each trained arm over its lengths (arrows in
    training order), of every method, the baselines off the line, gated adapters' tuned branches
    read alone, Base; error bars = std over seeds. False, and no file, where there is nothing to
    draw (no Base or no probe pool)."""
    # One λ line per method that has one (LoRA and (IA)3 in one study), each drawn; none without any.
    lines = [(v, lambda_line(study, name, v)) for v in line_vanillas(study)]
    base = next((p for lam, p in lambda_line(study, name) if lam == 0.0), None)
    # The arms of a method without a line (DoRA's) are drawn too, against Base alone.
    points = [p for p, _ in frontier_rows(study, name)] + unlined_points(study, name)
    if base is None and not points:
        return False
    # Imported here: the backend must be chosen before pyplot loads, and only plotting needs it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5.5))
    for (vanilla, each), colour in zip(lines, LINE_COLOURS, strict=False):
        named = f"{study.label(vanilla)} " if vanilla is not None and len(lines) > 1 else "vanilla "
        _draw_lambda_line(axis, each, colour, f"{named}scaled by λ (free)")
    arms: dict[str, list[FrontierPoint]] = {}
    for point in points:
        arms.setdefault(point.label, []).append(point)
    for label, curve in arms.items():
        _draw_arm(axis, label, curve, base)
    if base is not None:
        axis.plot([0.0], [base.target], "k*", markersize=13, label="Base", zorder=5)
    axis.axvline(0.0, color="black", linewidth=0.6, linestyle=":")
    score = "accuracy" if name == "accuracy" else "gold-option probability"
    axis.set_xlabel(f"forgetting: Base − arm, pooled multiple-choice {score} (points; right = forgets more)")
    if study.lower_is_better:  # the gain, so that up is learned more here too
        axis.set_ylabel(f"{learning_label(study)}, nats (up = learned more)")
    else:
        axis.set_ylabel(f"{study.target} {study.metric}" + ("" if study.metric in UNSCALED else " (×100)"))
    probes = ", ".join(study.pooled_tasks) or "no probes"
    axis.set_title(
        f"{study.experiment.model}: learning {study.target} vs forgetting ({probes})\nmean ± std over seeds",
        fontsize=9,
    )
    axis.legend(fontsize=8, loc="best")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=110)
    plt.close(figure)
    return True
