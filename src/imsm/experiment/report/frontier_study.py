"""The study `imsm frontier` reports, read from an experiment's results: its points, probes and
pooled scores. Data and statistics; no markdown, no plots.

A point is one arm read at one training length for one seed: the base model (0 steps), an adapter
as trained at each snapshot and at the end, or a post-hoc variant of a trained adapter (read with
another fusion, or its change scaled by λ). Forgetting is Base − point on the multiple-choice
probes the base model answers above chance, pooled question by question; a slice of a probe
(`piqa@300`) is held out of the pool and reported on its own. Learning is the target's score, read
along the axis where more is learned (`Study.learning`): the score itself, or for a lower-is-better
score such as the gold answer's NLL its gain Base − point. What the arms are called, which variants
are the free baselines and which score measures learning come from the experiment file
(`frontier_settings`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from imsm.errors import IMSMError
from imsm.experiment.frontier_settings import method_label
from imsm.experiment.questions import values_by_question
from imsm.experiment.report.frontier_chance import chance_accuracy
from imsm.experiment.report.frontier_methods import (
    method_of,
    methods_reading,
    setting_of,
    unscaled_arms,
    varying_options,
)
from imsm.experiment.report.grid import METHOD_LABELS
from imsm.experiment.runner import read_cell_result, read_original_row
from imsm.experiment.spec import Cell, Experiment
from imsm.experiment.variants import Variant
from imsm.metrics import LOWER_IS_BETTER
from imsm.tasks import get_task

BASE = "base"  # the `Arm.fusion` of the untrained model
TUNED_ALONE = "tuned branch alone"  # a gated adapter read without its gate (a `fusion: none` variant)
CHANCE_MARGIN = 2.0  # a probe enters the pool when the base model clears chance by this many standard errors
TARGET_METRICS = ("accuracy", "exact_match", "contains", "hit@5")  # the first the target has scores it
POOLED = ("accuracy", "gold_probability")  # the pooled scores, each question of each pooled probe weighted equally
POOL = "pooled"
FORGETTING = "forgetting"
LEARNING = "learning"  # the target's score along the axis of learning (`Study.learning`), as a Score's task
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
    variant of one (another fusion applied after training, the adapter's change scaled by λ, or its
    intruder dimensions reduced by peft's `reduce_intruder_dimension`)."""

    method: str  # peft method's label ("LoRA"); "" for the base model
    fusion: str  # the fusion the cells trained with, or BASE
    setting: str = ""  # options that tell arms of one method apart, e.g. "learning_rate=0.001"
    mixed: str | None = None  # a fusion applied after training (a `fusion` variant)
    scale: float = 1.0  # λ of an `adapter_scale` variant
    intruders: float | None = None  # λ of an `intruders` variant; None: not reduced

    @property
    def is_base(self) -> bool:
        return self.fusion == BASE

    @property
    def is_trained(self) -> bool:
        """An adapter read as it was trained (at some length), not a post-hoc variant of one."""
        return not self.is_base and self.mixed is None and self.scale == 1.0 and self.intruders is None

    @property
    def is_tuned_alone(self) -> bool:
        """A gated adapter read without its gate: its tuned branch, an adapter like any other."""
        return self.fusion not in (BASE, "none") and self.mixed == "none"

    @property
    def order(self) -> tuple[Any, ...]:
        """Base, the trained arms, the scaled vanilla adapters by λ, the post-hoc mixes, then the
        intruder-reduced adapters; within each, one peft method's arms together (LoRA's first)."""
        kind = (
            0 if self.is_base else 1 if self.is_trained else 4 if self.intruders is not None else 3 if self.mixed else 2
        )
        fusion = FUSION_ORDER.index(self.fusion) if self.fusion in FUSION_ORDER else len(FUSION_ORDER)
        reduced = -1.0 if self.intruders is None else -self.intruders  # the mildest reduction first
        return (kind, self.setting, _method_rank(self.method), fusion, self.scale, self.mixed or "", reduced)


BASE_ARM = Arm("", BASE)


def _method_rank(label: str) -> tuple[int, str]:
    """Where a peft method's arms go: in `METHOD_LABELS`'s order, then any other by name."""
    known = list(METHOD_LABELS.values())
    return (known.index(label), "") if label in known else (len(known), label)


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
    """A task the adapters were not trained on, and whether its questions enter the pooled score. A
    slice of a probe (`piqa@300`) is held out: never pooled, since the pool is declared on the probes'
    own questions and a slice measures on other questions what was chosen on those."""

    task: str
    kind: str  # the task's answer_type
    questions: int  # how many the base model answered (0: no base row)
    base_accuracy: float | None
    chance: float | None
    chance_source: str
    held_out: bool = False  # a task slice, NAME@START

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
        if self.held_out:
            return "held out"
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
    unscaled: set[tuple[str, str]] = field(default_factory=set)  # (method, setting) adapter_scale cannot scale
    _scores: dict[int, dict[Score, float]] = field(default_factory=dict, repr=False)  # id(point) -> scores
    memo: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)  # computed once: `once`

    @property
    def pooled_tasks(self) -> list[str]:
        return [p.task for p in self.probes if p.pooled]

    @property
    def held_out(self) -> list[Probe]:
        return [p for p in self.probes if p.held_out]

    @property
    def lower_is_better(self) -> bool:
        """Whether the target's score falls as the target is learned (an NLL)."""
        return self.metric in LOWER_IS_BETTER

    def learning(self, value: float) -> float:
        """A target score along the axis of learning (larger = learned more), as the λ line, the matching
        and the plots read it: the score itself, or where lower is better its gain Base − value."""
        if not self.lower_is_better:
            return value
        base = self.base.metrics.get(self.target, {}).get(self.metric) if self.base is not None else None
        return (0.0 if base is None else base) - value

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

    def has_lambda_line(self, arm: Arm) -> bool:
        """Whether the arm's vanilla adapter can be scaled by λ (not DoRA's, say): else its method has
        no λ line, and its arms are compared with its free baselines only."""
        return (arm.method, arm.setting) not in self.unscaled

    @cached_property
    def _methods_reading(self) -> dict[tuple[str, str], set[str]]:
        return methods_reading([c for c in self.experiment.cells if str(c.config["task"]) == self.target])

    def _shared(self, fusion: str, key: str) -> bool:
        """Whether arms of several peft methods are read with this fusion and variant key."""
        return len(self._methods_reading.get((fusion, key), ())) > 1

    def label(self, arm: Arm) -> str:
        """The arm's name in tables and plots: the experiment file's label for its fusion (or for a
        declared baseline), then its post-hoc variant and its setting. A label that arms of several
        peft methods would share names the method (`frontier_settings.method_label`)."""
        if arm.is_base:
            return "Base"
        settings = self.experiment.frontier
        baseline = settings.baseline(arm.mixed, arm.scale, arm.intruders) if arm.fusion == "none" else None
        trained = settings.trained_label(arm.method, arm.fusion, self._shared(arm.fusion, ""))
        scaled = (f" λ={arm.scale:g}" if arm.scale != 1.0 else "") + (
            f", intruders reduced λ={arm.intruders:g}" if arm.intruders is not None else ""
        )
        if baseline is not None and baseline.label:
            core = method_label(baseline.label, arm.method, self._shared("none", baseline.variant_key))
        elif arm.mixed == "none":
            core = f"{trained}, {TUNED_ALONE}{scaled}"
        else:
            core = trained + (f" + {arm.mixed} fusion" if arm.mixed else "") + scaled
        return core + (f" [{arm.setting}]" if arm.setting else "")

    def is_baseline(self, arm: Arm) -> bool:
        """A free baseline the experiment file declares: a variant of a vanilla adapter."""
        declared = self.experiment.frontier.baseline(arm.mixed, arm.scale, arm.intruders)
        return arm.fusion == "none" and declared is not None

    @cached_property
    def base_scores(self) -> dict[Score, float]:
        return self.scores(self.base) if self.base is not None else {}

    def scores(self, point: Point) -> dict[Score, float]:
        """`point_scores`, computed once per point: every table reads them, and pooling is not free."""
        if id(point) not in self._scores:
            self._scores[id(point)] = point_scores(self, point)
        return self._scores[id(point)]


# --- reading the results ---------------------------------------------------------------------------


def _trained_arm(cell: Cell, varying: Mapping[str, Sequence[str]]) -> Arm:
    return Arm(method_of(cell), str(cell.config["fusion"]), setting_of(cell, varying))


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
        point_arm = Arm(arm.method, arm.fusion, arm.setting, variant.fusion, variant.adapter_scale, variant.intruders)
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


def _column_mean(columns: Mapping[str, list[Any]] | None, name: str) -> tuple[float | None, int]:
    values = [v for v in (columns or {}).get(name) or [] if v is not None]
    return (sum(values) / len(values), len(values)) if values else (None, 0)


def _probes(experiment: Experiment, target: str, points: list[Point], base: Point | None) -> list[Probe]:
    """Every task other than the target that some point was evaluated on, drift, multiple choice, then
    text probes; multiple-choice ones with their base accuracy and chance."""
    tasks = [t for p in ([base] if base else []) + points for t in p.metrics if t != target]
    probes = []
    for task in dict.fromkeys(tasks):
        resolved = get_task(task)
        kind = resolved.answer_type
        columns = base.questions.get(task) if base else None
        accuracy, count = _column_mean(columns, "accuracy")
        if accuracy is None and kind == "multiple_choice" and base and "accuracy" in base.metrics.get(task, {}):
            accuracy = base.metrics[task]["accuracy"]  # no per-question scores: no count, so not pooled
        count = count or len((columns or {}).get("index") or [])
        chance, source = chance_accuracy(experiment, task) if kind == "multiple_choice" else (None, "")
        probes.append(Probe(task, kind, count, accuracy, chance, source, held_out=resolved.first is not None))
    return sorted(probes, key=lambda p: KIND_ORDER.index(p.kind) if p.kind in KIND_ORDER else len(KIND_ORDER))


def _target_metric(target: str, points: list[Point], base: Point | None, chosen: str | None) -> str:
    """`chosen`, checked, or the first of TARGET_METRICS the target's results have."""
    present = list(dict.fromkeys(m for p in points + ([base] if base else []) for m in p.metrics.get(target, {})))
    if chosen is not None:
        if present and chosen not in present:
            raise IMSMError(
                f"metric {chosen!r} is not among {target}'s metrics ({', '.join(present)}); pick one with --metric "
                "or the experiment file's frontier.metric"
            )
        return chosen
    return next((m for m in TARGET_METRICS if m in present), present[0] if present else get_task(target).metrics[0])


def collect_study(experiment: Experiment, target: str | None = None, metric: str | None = None) -> Study:
    """Every point of the cells trained on `target` (default: the experiment's only training task),
    read from their results; missing cells and evaluations are listed, never fatal. `metric` (else
    the experiment file's `frontier.metric`, else `_target_metric`'s default) scores the target."""
    metric = metric if metric is not None else experiment.frontier.metric
    tasks = list(dict.fromkeys(str(c.config["task"]) for c in experiment.cells))
    if target is None:
        if len(tasks) > 1:
            raise IMSMError(f"the experiment trains on several tasks ({', '.join(tasks)}); pick one with --task")
        target = tasks[0]
    if target not in tasks:
        raise IMSMError(f"no cell of the experiment trains on {target!r}; pick one of {', '.join(tasks)} with --task")
    cells = [c for c in experiment.cells if str(c.config["task"]) == target]
    varying = varying_options(cells)
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
        unscaled=unscaled_arms(cells, varying),
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
        scores[(LEARNING, study.metric)] = study.learning(target)
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
    for probe in study.held_out:  # compared between arms on the pool's own scores
        for metric in POOLED:
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
