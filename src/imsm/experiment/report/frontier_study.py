"""The study `imsm frontier` reports, read from an experiment's results: its points and probes, their
pooled scores, the question-level comparisons and the λ line. Data and statistics; no markdown, no plots.

The study asks what an experiment's adapters learn of their target task against what general knowledge
they forget, and whether a gated adapter forgets less than the free ways of forgetting less.
A point is one arm read at one training length for one seed: the base model (0 steps), an adapter
as trained (vanilla LoRA, IMSM-LoRA, IMSM with a trained 50/50 mix) at each snapshot and at the end,
or a post-hoc variant of the vanilla adapter (its change scaled by λ, or mixed 50/50 with the frozen
branch untrained). Forgetting is Base − point on the multiple-choice probes the base model answers
above chance, pooled question by question. The free baseline is the λ line: scaling the vanilla
adapter from λ = 0 (the base model) to 1 (as trained) trades target gain for forgetting at no
training cost; an arm is worth its gate only where it forgets less than that line at the same gain.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from imsm.checked_files import read_json_lines
from imsm.errors import IMSMError
from imsm.experiment.questions import paired_over_questions, values_by_question
from imsm.experiment.report.frontier_line import LineComparison, SeedPair, compare_with_line, matched_score
from imsm.experiment.report.grid import METHOD_LABELS, scale
from imsm.experiment.runner import original_path, read_cell_result, read_original_row
from imsm.experiment.spec import GATE_OPTIONS, NOT_IDENTITY, Cell, Experiment
from imsm.experiment.stats import PairedTest, mean_std, paired_t_test
from imsm.experiment.variants import Variant
from imsm.tasks import get_task

BASE = "base"  # the `Arm.fusion` of the untrained model
UNTRAINED_MIX = "untrained mix"
TUNED_ALONE = "tuned branch alone"  # a gated adapter read without its gate (a `fusion: none` variant)
# Chance accuracy of the multiple-choice probes from their usual number of options (ARC has 3-5,
# nearly always 4), used when the base model's per-example rows (WORK/original.TASK.jsonl, which
# list every question's options) are not on this machine.
USUAL_CHANCE = {"arc_easy": 0.25, "arc_challenge": 0.25, "sciq": 0.25, "piqa": 0.5, "winogrande": 0.5}
CHANCE_MARGIN = 2.0  # a probe enters the pool when the base model clears chance by this many standard errors
TARGET_METRICS = ("accuracy", "exact_match", "contains", "hit@5")  # the first the target has scores it
POOLED = ("accuracy", "gold_probability")  # the pooled scores, each question of each pooled probe weighted equally
POOL = "pooled"
FORGETTING = "forgetting"
# Per kind of probe: the score the curves show, then the likelihood scores shown beside them.
PROBE_SCORES = {
    "drift": ("drift_kl", "drift_nll"),
    "multiple_choice": ("accuracy", "gold_log_likelihood"),
    "text": ("hit@5", "gold_nll"),
    "yes_no": ("accuracy", "gold_nll"),
}
KIND_ORDER = ("drift", "multiple_choice", "text")
FUSION_ORDER = ("none", "imsm", "mean", "no-query")

Score = tuple[str, str]  # (task, or POOL / FORGETTING; metric)


@dataclass(frozen=True)
class Arm:
    """A way of getting a model: the base model, an adapter as trained with some fusion, or a post-hoc
    variant of one (another fusion applied after training, or the adapter's change scaled by λ)."""

    method: str  # peft method's label ("LoRA"); "" for the base model
    fusion: str  # the fusion the cells trained with, or BASE
    setting: str = ""  # other training options that tell arms apart, e.g. "learning_rate=0.001"
    mixed: str | None = None  # a fusion applied after training (a `fusion` variant)
    scale: float = 1.0  # λ of an `adapter_scale` variant

    @property
    def is_base(self) -> bool:
        return self.fusion == BASE

    @property
    def is_trained(self) -> bool:
        """An adapter read as it was trained (at some length), not a post-hoc variant of one."""
        return not self.is_base and self.mixed is None and self.scale == 1.0

    @property
    def trained_label(self) -> str:
        names = {"none": "{}", "imsm": "IMSM-{}", "no-query": "IMSM-{} (no query)"}
        if self.fusion == "mean":
            return "IMSM-mean" if self.method == "LoRA" else f"IMSM-{self.method} (mean)"
        return names.get(self.fusion, "{} (" + self.fusion + ")").format(self.method)

    @property
    def label(self) -> str:
        if self.is_base:
            return "Base"
        if self.mixed == "mean" and self.fusion == "none":
            core = UNTRAINED_MIX
        elif self.mixed == "none":
            core = f"{self.trained_label}, {TUNED_ALONE}"
        else:
            core = self.trained_label + (f" + {self.mixed} fusion" if self.mixed else "")
        core += f" λ={self.scale:g}" if self.scale != 1.0 else ""
        return core + (f" [{self.setting}]" if self.setting else "")

    @property
    def order(self) -> tuple[Any, ...]:
        """Base, the trained arms, the scaled vanilla adapters by λ, then the post-hoc mixes."""
        kind = 0 if self.is_base else 1 if self.is_trained else 3 if self.mixed else 2
        fusion = FUSION_ORDER.index(self.fusion) if self.fusion in FUSION_ORDER else len(FUSION_ORDER)
        return (kind, self.setting, fusion, self.method, self.scale, self.mixed or "")


BASE_ARM = Arm("", BASE)


@dataclass(frozen=True)
class Point:
    """One evaluated model: an arm after `length` optimizer steps (0: the base model) for one seed."""

    arm: Arm
    length: int | None  # None: the run's step count was not recorded
    seed: int | None  # None: the base model, the same for every seed
    final: bool  # the end of training (a variant without `step`)
    metrics: dict[str, dict[str, float]]  # task -> summary metrics
    questions: dict[str, dict[str, list[Any]]]  # task -> per-question columns


def length_label(length: int | None) -> str:
    """A point's step count as tables and plots show it."""
    return "?" if length is None else str(length)


@dataclass(frozen=True)
class Probe:
    """A task the adapters were not trained on, and whether its questions enter the pooled score."""

    task: str
    kind: str  # the task's answer_type
    questions: int  # how many the base model answered (0: no base row)
    base_accuracy: float | None
    chance: float | None
    chance_source: str

    @property
    def margin(self) -> float | None:
        """CHANCE_MARGIN binomial standard errors of an accuracy at chance over this many questions:
        the test of "answers better than guessing"."""
        if self.chance is None or not self.questions:
            return None
        return CHANCE_MARGIN * math.sqrt(self.chance * (1 - self.chance) / self.questions)

    @property
    def pooled(self) -> bool:
        return self.kind == "multiple_choice" and self.exclusion is None

    @property
    def exclusion(self) -> str | None:
        """Why a multiple-choice probe stays out of the pool, or None."""
        if self.base_accuracy is None or not self.questions:
            return "no base row"
        if self.chance is None or self.margin is None:
            return "chance unknown"
        if self.base_accuracy - self.chance < self.margin:
            return "base at chance"
        return None


@dataclass
class Study:
    """The points of one experiment's cells trained on one target task, and the probes they share."""

    experiment: Experiment
    target: str
    metric: str
    points: list[Point]
    base: Point | None
    probes: list[Probe]
    seeds: list[int]  # every seed the target's cells train with
    missing: list[str] = field(default_factory=list)
    _scores: dict[int, dict[Score, float]] = field(default_factory=dict, repr=False)  # id(point) -> scores

    @property
    def pooled_tasks(self) -> list[str]:
        return [p.task for p in self.probes if p.pooled]

    def arms(self) -> list[Arm]:
        return sorted({p.arm for p in self.points}, key=lambda arm: arm.order)

    def groups(self) -> dict[tuple[Arm, int | None], dict[int, Point]]:
        """(arm, length) -> seed -> point, arms in `Arm.order` and lengths in training order."""
        grouped: dict[tuple[Arm, int | None], dict[int, Point]] = {}
        for point in self.points:
            grouped.setdefault((point.arm, point.length), {})[point.seed] = point
        order = sorted(grouped, key=lambda key: (key[0].order, key[1] is None, key[1] or 0))
        return {key: grouped[key] for key in order}

    def final_length(self, arm: Arm) -> int | None:
        """The length most of the arm's final points have (seeds of one setting train equally long)."""
        lengths = Counter(p.length for p in self.points if p.arm == arm and p.final)
        return lengths.most_common(1)[0][0] if lengths else None

    def final(self, arm: Arm) -> dict[int, Point]:
        """seed -> the arm's point at the end of training."""
        length = self.final_length(arm)
        return {p.seed: p for p in self.points if p.arm == arm and p.final and p.length == length}

    @cached_property
    def base_scores(self) -> dict[Score, float]:
        return self.scores(self.base) if self.base is not None else {}

    def scores(self, point: Point) -> dict[Score, float]:
        """`point_scores`, computed once per point: every table reads them, and pooling is not free."""
        if id(point) not in self._scores:
            self._scores[id(point)] = point_scores(self, point)
        return self._scores[id(point)]


# --- reading the results ---------------------------------------------------------------------------


def _trained_arm(cell: Cell, varying: Sequence[str]) -> Arm:
    config = cell.config
    setting = ", ".join(f"{key}={config[key]}" for key in varying)
    return Arm(METHOD_LABELS.get(config["peft"], str(config["peft"])), str(config["fusion"]), setting)


def _varying(cells: Sequence[Cell]) -> list[str]:
    """Training options other than seed and fusion that differ among the cells: they split arms."""
    ignored = {"seed", "fusion", "task", "cache_frozen", *GATE_OPTIONS, *NOT_IDENTITY}
    keys = sorted({key for cell in cells for key in cell.config} - ignored)
    return [k for k in keys if len({json.dumps(c.config.get(k), sort_keys=True) for c in cells}) > 1]


def _cell_points(cell: Cell, result: dict[str, Any], arm: Arm, missing: list[str]) -> list[Point]:
    """A finished (or partly evaluated) cell's points: as trained, then each variant; what it still
    owes is appended to `missing`."""
    steps = (result.get("training") or {}).get("steps")
    points = []
    for key, tasks in [("", cell.evaluate), *cell.variants.items()]:
        part = result if not key else (result.get("variants") or {}).get(key) or {}
        metrics = part.get("metrics") or {}
        absent = [t for t in tasks if t not in metrics]
        if absent:
            missing.append(f"{cell.name} [{key or 'as trained'}]: {', '.join(absent)}")
        if not metrics:
            continue
        variant = Variant.from_key(key)
        length = variant.step if variant.step is not None else steps
        point_arm = Arm(arm.method, arm.fusion, arm.setting, variant.fusion, variant.adapter_scale)
        final = variant.step is None or variant.step == steps
        points.append(Point(point_arm, length, cell.config["seed"], final, metrics, part.get("questions") or {}))
    return points


def _base_point(experiment: Experiment, missing: list[str]) -> Point | None:
    """The untrained model (0 steps) on every task of the experiment's `original`."""
    metrics, questions = {}, {}
    for task in experiment.original:
        row = read_original_row(experiment, task)  # a damaged file is refused with the fix
        if row is None:
            missing.append(f"Base: {task}")
            continue
        metrics[task] = row.get("metrics") or {}
        if row.get("questions"):
            questions[task] = row["questions"]
    return Point(BASE_ARM, 0, None, True, metrics, questions) if metrics else None


def chance_accuracy(experiment: Experiment, task: str) -> tuple[float | None, str]:
    """A multiple-choice probe's chance accuracy and where it comes from: the mean of 1 / options over
    the questions the base model answered where their rows are kept, else the task's usual options."""
    rows = experiment.work / f"original.{Path(task).stem}.jsonl"
    if rows.is_file():
        fix = (
            f"delete it (the report then assumes the task's usual options), or delete it and "
            f"{original_path(experiment, task)} and rerun imsm experiment to recompute both"
        )
        counts = [len(row.get("choices") or []) for row in read_json_lines(rows, fix=fix)]
        counts = [n for n in counts if n]
        if counts:
            return sum(1 / n for n in counts) / len(counts), "options of the questions"
    if Path(task).stem in USUAL_CHANCE:
        return USUAL_CHANCE[Path(task).stem], "usual options"
    return None, "unknown"


def _column_mean(columns: Mapping[str, list[Any]] | None, name: str) -> tuple[float | None, int]:
    values = [v for v in (columns or {}).get(name) or [] if v is not None]
    return (sum(values) / len(values), len(values)) if values else (None, 0)


def _probes(experiment: Experiment, target: str, points: list[Point], base: Point | None) -> list[Probe]:
    """Every task other than the target that some point was evaluated on, drift, multiple choice, then
    text probes; multiple-choice ones with their base accuracy and chance."""
    tasks = [t for p in ([base] if base else []) + points for t in p.metrics if t != target]
    probes = []
    for task in dict.fromkeys(tasks):
        kind = get_task(task).answer_type
        columns = base.questions.get(task) if base else None
        accuracy, count = _column_mean(columns, "accuracy")
        if accuracy is None and kind == "multiple_choice" and base and "accuracy" in base.metrics.get(task, {}):
            accuracy = base.metrics[task]["accuracy"]  # no per-question scores: no count, so not pooled
        count = count or len((columns or {}).get("index") or [])
        chance, source = chance_accuracy(experiment, task) if kind == "multiple_choice" else (None, "")
        probes.append(Probe(task, kind, count, accuracy, chance, source))
    return sorted(probes, key=lambda p: KIND_ORDER.index(p.kind) if p.kind in KIND_ORDER else len(KIND_ORDER))


def _target_metric(target: str, points: list[Point], base: Point | None, chosen: str | None) -> str:
    """`chosen`, checked, or the first of TARGET_METRICS the target's results have."""
    present = list(dict.fromkeys(m for p in points + ([base] if base else []) for m in p.metrics.get(target, {})))
    if chosen is not None:
        if present and chosen not in present:
            raise IMSMError(
                f"metric {chosen!r} is not among {target}'s metrics ({', '.join(present)}); pick one with --metric"
            )
        return chosen
    return next((m for m in TARGET_METRICS if m in present), present[0] if present else get_task(target).metrics[0])


def collect_study(experiment: Experiment, target: str | None = None, metric: str | None = None) -> Study:
    """Every point of the cells trained on `target` (default: the experiment's only training task),
    read from their results; missing cells and evaluations are listed, never fatal."""
    tasks = list(dict.fromkeys(str(c.config["task"]) for c in experiment.cells))
    if target is None:
        if len(tasks) > 1:
            raise IMSMError(f"the experiment trains on several tasks ({', '.join(tasks)}); pick one with --task")
        target = tasks[0]
    if target not in tasks:
        raise IMSMError(f"no cell of the experiment trains on {target!r}; pick one of {', '.join(tasks)} with --task")
    cells = [c for c in experiment.cells if str(c.config["task"]) == target]
    varying = _varying(cells)
    missing: list[str] = []
    base = _base_point(experiment, missing)
    seen: set[tuple[Arm, int | None, int]] = set()
    points = []
    for cell in cells:
        result = read_cell_result(experiment, cell)
        if result is None:
            missing.append(f"{cell.name}: not run")
            continue
        for point in _cell_points(cell, result, _trained_arm(cell, varying), missing):
            if (point.arm, point.length, point.seed) not in seen:  # a step variant at the last step is the final
                seen.add((point.arm, point.length, point.seed))
                points.append(point)
    return Study(
        experiment=experiment,
        target=target,
        metric=_target_metric(target, points, base, metric),
        points=points,
        base=base,
        probes=_probes(experiment, target, points, base),
        seeds=sorted({c.config["seed"] for c in cells}),
        missing=missing,
    )


# --- scores ----------------------------------------------------------------------------------------


def pooled_columns(point: Point, tasks: Sequence[str]) -> dict[str, list[Any]] | None:
    """The pooled probes' questions as one task's columns (index: (task, question)), or None where a
    pooled probe lacks per-question scores: a pool over fewer probes would not compare with Base's."""
    pooled: dict[str, list[Any]] = {"index": [], **{name: [] for name in POOLED}}
    for task in tasks:
        columns = point.questions.get(task)
        if not columns or any(name not in columns for name in POOLED):
            return None
        pooled["index"] += [(task, i) for i in columns["index"]]
        for name in POOLED:
            pooled[name] += columns[name]
    return pooled if tasks else None


def point_scores(study: Study, point: Point) -> dict[Score, float]:
    """What the tables show of one point: the target metric, the pooled scores and their forgetting
    (Base − point), and each probe's scores; absent ones are left out."""
    scores: dict[Score, float] = {}
    target = point.metrics.get(study.target, {}).get(study.metric)
    if target is not None:
        scores[(study.target, study.metric)] = target
    pooled = pooled_columns(point, study.pooled_tasks)
    base_pool = pooled_columns(study.base, study.pooled_tasks) if study.base and point.arm != BASE_ARM else None
    for name in POOLED:
        value, _ = _column_mean(pooled, name)
        if value is not None:
            scores[(POOL, name)] = value
            if base_pool is not None and pooled is not None:
                # Over the questions both answered: a probe cut to other limits must not pass for forgetting.
                base_value, point_value = shared_means(base_pool, pooled, name)
                if base_value is not None and point_value is not None:
                    scores[(FORGETTING, name)] = base_value - point_value
    for probe in study.probes:
        for metric in PROBE_SCORES.get(probe.kind, ()):
            value = point.metrics.get(probe.task, {}).get(metric)
            if value is not None:
                scores[(probe.task, metric)] = value
    return scores


def shared_means(
    first: Mapping[str, list[Any]], second: Mapping[str, list[Any]], name: str
) -> tuple[float | None, float | None]:
    """The means of `name` in two sets of question columns, over the questions both have a value for."""
    a, b = values_by_question(first, name), values_by_question(second, name)
    shared = a.keys() & b.keys()
    if not shared:
        return None, None
    return sum(a[q] for q in shared) / len(shared), sum(b[q] for q in shared) / len(shared)


def seed_values(study: Study, points: Mapping[Any, Point], score: Score) -> dict[Any, float]:
    """seed -> value of `score`, over the points that have it."""
    out = {}
    for seed, point in points.items():
        value = study.scores(point).get(score)
        if value is not None and not math.isnan(value):
            out[seed] = value
    return out


def _seed_mean(
    study: Study, points: Mapping[Any, Point], score: Score, seeds: set[Any] | None = None
) -> tuple[float, float, int] | None:
    """(mean, std, seeds) of `score` in display scale over `seeds` (default: all), or None where no seed
    has it."""
    values = [v for seed, v in seed_values(study, points, score).items() if seeds is None or seed in seeds]
    if not values:
        return None
    mu, sd = mean_std([scale(score[1], v) for v in values])
    return mu, sd, len(values)


# --- paired comparisons ----------------------------------------------------------------------------


@dataclass(frozen=True)
class QuestionTest:
    """treated − control over questions, each question averaged over the seeds both have first."""

    test: PairedTest
    standard_error: float
    seeds: int


def compare_questions(
    treated: Mapping[Any, Mapping[str, list[Any]]], control: Mapping[Any, Mapping[str, list[Any]]], name: str
) -> QuestionTest:
    """`questions.paired_over_questions`: each question averaged over the seeds both arms have."""
    test, seeds = paired_over_questions(treated, control, name)
    return QuestionTest(test, test.standard_error, seeds)


def flips(point: Mapping[str, list[Any]], base: Mapping[str, list[Any]]) -> tuple[int, int]:
    """(right → wrong, wrong → right): questions the point answers differently from the base model,
    over the questions both have an accuracy for."""
    mine = {q: v for q, v in zip(point["index"], point["accuracy"], strict=True) if v is not None}
    theirs = {q: v for q, v in zip(base["index"], base["accuracy"], strict=True) if v is not None}
    shared = set(mine) & set(theirs)
    lost = sum(theirs[q] > 0.5 and mine[q] <= 0.5 for q in shared)
    gained = sum(theirs[q] <= 0.5 and mine[q] > 0.5 for q in shared)
    return lost, gained


def columns_by_seed(study: Study, points: Mapping[Any, Point], task: str | None) -> dict[Any, dict[str, list]]:
    """seed -> the target's question columns (`task`) or, for None, the pooled probes'."""
    out = {}
    for seed, point in points.items():
        columns = pooled_columns(point, study.pooled_tasks) if task is None else point.questions.get(task)
        if columns:
            out[seed] = columns
    return out


# --- the λ frontier --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrontierPoint:
    """A seed mean of one (arm, length) in display scale: target score and forgetting, with spreads."""

    label: str
    length: int | None
    seeds: int
    target: float
    target_std: float
    forgetting: float
    forgetting_std: float


def _frontier_point(
    study: Study, label: str, length: int | None, points: Mapping[Any, Point], name: str
) -> FrontierPoint | None:
    # Target and forgetting from the same seeds: a seed still being evaluated must not lend the point
    # one coordinate and not the other.
    target_score, forgetting_score = (study.target, study.metric), (FORGETTING, name)
    seeds = set(seed_values(study, points, target_score)) & set(seed_values(study, points, forgetting_score))
    target = _seed_mean(study, points, target_score, seeds)
    forgetting = _seed_mean(study, points, forgetting_score, seeds)
    if target is None or forgetting is None:
        return None
    return FrontierPoint(label, length, len(seeds), target[0], target[1], *forgetting[:2])


def vanilla_arm(study: Study, like: Arm | None = None) -> Arm | None:
    """The vanilla adapter the λ line scales: the vanilla arm read as trained at the end, of the same
    peft method and setting as `like` where given (else the first)."""
    return next(
        (
            a
            for a in study.arms()
            if a.is_trained
            and a.fusion == "none"
            and study.final(a)
            and (like is None or (a.method, a.setting) == (like.method, like.setting))
        ),
        None,
    )


def _scaled_arms(study: Study, vanilla: Arm) -> list[Arm]:
    """The vanilla adapter's λ variants (λ ≠ 1), by λ."""
    scaled = [a for a in study.arms() if a == Arm(vanilla.method, vanilla.fusion, vanilla.setting, None, a.scale)]
    return sorted((a for a in scaled if a.scale != 1.0), key=lambda a: a.scale)


def lambda_line(study: Study, name: str, vanilla: Arm | None = None) -> list[tuple[float, FrontierPoint]]:
    """(λ, seed mean) of Base (λ = 0), the scaled vanilla adapter and the vanilla adapter as trained
    (λ = 1), by λ; `name` is the pooled score forgetting is measured on, `vanilla` the adapter scaled
    (default: the first vanilla arm). Entries without both the target score and the forgetting are
    left out."""
    vanilla = vanilla or vanilla_arm(study)
    line: list[tuple[float, FrontierPoint | None]] = []
    if (study.target, study.metric) in study.base_scores and (POOL, name) in study.base_scores:
        base_target = scale(study.metric, study.base_scores[(study.target, study.metric)])
        line.append((0.0, FrontierPoint("Base", 0, 1, base_target, 0.0, 0.0, 0.0)))
    if vanilla is not None:
        for arm in _scaled_arms(study, vanilla):
            line.append((arm.scale, _frontier_point(study, arm.label, None, study.final(arm), name)))
        final = study.final_length(vanilla)
        line.append((1.0, _frontier_point(study, vanilla.label, final, study.final(vanilla), name)))
    return sorted(((lam, p) for lam, p in line if p is not None), key=lambda entry: entry[0])


def frontier_at(line: Sequence[tuple[float, FrontierPoint]], target: float) -> tuple[float, str] | None:
    """The λ line's forgetting at `target` and where the target fell (`frontier_line.matched_score`:
    the line's gain made non-decreasing in λ, the smallest λ that reaches `target`; past the line's
    best gain its first point that reaches it, below Base's Base), or None for an empty line."""
    if not line:
        return None
    return matched_score([p.target for _, p in line], [p.forgetting for _, p in line], target)


def lambda_gaps(study: Study, name: str) -> list[str]:
    """The λ variants that the line leaves out for want of results (labels)."""
    vanilla = vanilla_arm(study)
    if vanilla is None:
        return []
    return [
        arm.label
        for arm in _scaled_arms(study, vanilla)
        if _frontier_point(study, arm.label, None, study.final(arm), name) is None
    ]


def _placed_arms(study: Study) -> dict[tuple[Arm, int | None], dict[int, Point]]:
    """The groups set against the λ line: every trained arm at every length, the untrained mix, and a
    gated adapter's tuned branch read alone (an adapter like any other, which a user could deploy)."""

    def placed(arm: Arm) -> bool:
        untrained_mix = arm.fusion == "none" and arm.mixed == "mean"
        tuned_alone = arm.fusion != "none" and arm.mixed == "none"
        return arm.is_trained or (arm.scale == 1.0 and (untrained_mix or tuned_alone))

    return {(arm, length): points for (arm, length), points in study.groups().items() if placed(arm)}


def frontier_rows(study: Study, name: str) -> list[tuple[FrontierPoint, tuple[float, str] | None]]:
    """Every arm `_placed_arms` sets against the λ line, as (seed mean, `frontier_at` its target
    score on the line of seed means of its own vanilla adapter)."""
    lines: dict[Arm | None, list[tuple[float, FrontierPoint]]] = {}
    rows = []
    for (arm, length), points in _placed_arms(study).items():
        vanilla = vanilla_arm(study, arm)
        if vanilla is not None and vanilla not in lines:
            lines[vanilla] = lambda_line(study, name, vanilla)
        point = _frontier_point(study, arm.label, length, points, name)
        if point is not None:  # no vanilla adapter of its method and setting: no line to place it on
            rows.append((point, frontier_at(lines[vanilla], point.target) if vanilla is not None else None))
    return rows


# --- each seed against its own λ line --------------------------------------------------------------


@dataclass(frozen=True)
class LineTest:
    """An arm's forgetting minus its λ line's at the same target score (negative: forgets less), each
    seed's arm against the line of that seed's own vanilla adapter, on the pooled score `name`:
    the seeds' mean Δ with its bootstrap over questions, and the seeds' Δ tested against 0."""

    arm: Arm
    length: int | None
    name: str
    comparison: LineComparison | None  # None: no seed could be matched
    by_seed: PairedTest | None
    unmatched: int  # seeds without per-question target scores or a line to match against


def _per_question(point: Point, study: Study, name: str) -> tuple[dict[Any, float], dict[Any, float]] | None:
    """(target score, pooled `name`) per question of one point, or None where either is missing."""
    target = values_by_question(point.questions.get(study.target) or {}, study.metric)
    pooled = pooled_columns(point, study.pooled_tasks)
    probes = values_by_question(pooled, name) if pooled is not None else {}
    return (target, probes) if target and probes else None


def _seed_line(study: Study, vanilla: Arm, seed: Any, name: str) -> list[tuple[dict[Any, float], dict[Any, float]]]:
    """Per question, (target, pooled `name`) of one seed's λ line in λ order: Base, that seed's scaled
    vanilla adapters, that seed's vanilla adapter as trained; points without both are left out."""
    candidates = [(0.0, study.base)] if study.base is not None else []
    candidates += [(a.scale, study.final(a).get(seed)) for a in _scaled_arms(study, vanilla)]
    candidates.append((1.0, study.final(vanilla).get(seed)))
    candidates.sort(key=lambda entry: entry[0])  # λ above 1 goes past the adapter as trained
    return [values for _, point in candidates if point is not None and (values := _per_question(point, study, name))]


def _aligned(lines: Mapping[Any, list[tuple[dict, dict]]], arms: Mapping[Any, tuple[dict, dict]]) -> list[SeedPair]:
    """The seeds' lines and arms as arrays over the target and probe questions every one of them has."""
    everything = [entry for seed in arms for entry in [*lines[seed], arms[seed]]]
    targets = sorted(set.intersection(*(set(t) for t, _ in everything)), key=str)
    probes = sorted(set.intersection(*(set(p) for _, p in everything)), key=str)
    if not targets or not probes:
        return []

    def rows(values: dict, keys: list) -> np.ndarray:
        return np.array([values[k] for k in keys], dtype=float)

    return [
        SeedPair(
            np.stack([rows(t, targets) for t, _ in lines[seed]]),
            np.stack([rows(p, probes) for _, p in lines[seed]]),
            rows(arms[seed][0], targets),
            rows(arms[seed][1], probes),
        )
        for seed in sorted(arms, key=str)
    ]


def line_tests(study: Study, name: str) -> list[LineTest]:
    """Every arm `frontier_rows` places, against the λ line of each seed's own vanilla adapter:
    `frontier_line.compare_with_line` over the seeds it has, on the pooled score `name`."""
    tests = []
    for (arm, length), points in _placed_arms(study).items():
        vanilla = vanilla_arm(study, arm)
        if vanilla is None:
            continue
        lines, arms, unmatched = {}, {}, 0
        for seed, point in points.items():
            mine, line = _per_question(point, study, name), _seed_line(study, vanilla, seed, name)
            if mine is None or not line:
                unmatched += 1
                continue
            lines[seed], arms[seed] = line, mine
        pairs = _aligned(lines, arms) if arms else []
        if not pairs:  # said in the report, not dropped from it
            tests.append(LineTest(arm, length, name, None, None, len(points)))
            continue
        comparison = compare_with_line(pairs)
        by_seed = paired_t_test(comparison.deltas, [0.0] * len(comparison.deltas))
        tests.append(LineTest(arm, length, name, comparison, by_seed, unmatched))
    return tests
