"""`TaskKind`: what one kind of evaluation (generation, multiple choice, drift) supplies to
`imsm.evaluation.run.run_task`, which does the rest: timer, resume journal, progress and result."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from imsm.evaluation.frozen_states import uses_frozen_states

if TYPE_CHECKING:
    from imsm.evaluation.frozen_states import FrozenStateStore, TaskStates
    from imsm.model.siamese import IMSMModel
    from imsm.prompting import PromptFormatter
    from imsm.tasks.base import Record, Task

Keep = Callable[[list[int], list[Any]], None]


@dataclass(eq=False, repr=False)
class TaskKind:
    """One task's records and how to evaluate them; each kind supplies only what differs.

    Attributes:
        model, formatter: What reads the records, and how their texts become tokens.
        task, records: The task and the records to evaluate.
        batch_size: Items evaluated together.
        frozen_states: Where the frozen branch's states are kept and reused across evaluations
            on the same base model (`imsm.evaluation.frozen_states`); None computes them here.
        unit: The progress bar's unit ("ex", "q", "doc"); set by each kind.
        row_type: The dataclass of one item's result, whose fields the journal's rows hold.
        journal_format: Bumped when the journal's rows change meaning, so an older journal is
            started afresh.
    """

    model: IMSMModel
    formatter: PromptFormatter
    task: Task
    records: list[Record]
    batch_size: int = 8
    _: KW_ONLY
    frozen_states: FrozenStateStore | None = None

    unit: ClassVar[str]
    row_type: ClassVar[type]
    journal_format: ClassVar[int]

    @property
    def chat_template(self) -> bool | None:
        """Whether the prompts went through the chat template (None: these are not prompts)."""
        return self.formatter.use_chat_template

    def open_frozen_states(self, drift: bool = False) -> TaskStates | None:
        """This task's entries of the store; None without one, or when the model's scoring never
        reads the frozen branch (nor, with `drift`, the base model's distribution): then the base
        weights are not even fingerprinted."""
        if self.frozen_states is None or not uses_frozen_states(self.model, drift):
            return None
        return self.frozen_states.open(self.model, self.task.name)

    @property
    def generated(self) -> bool | None:
        """Whether answers were generated (None: this kind never generates, it scores given texts)."""
        return None

    def items(self) -> Sequence[int]:
        """The indices of the records to evaluate: all of them unless a kind says otherwise."""
        return range(len(self.records))

    def fits(self, index: int, row: dict[str, Any]) -> bool:
        """Whether a journal row still fits its item, beyond the fingerprint."""
        return True

    def journal_key(self) -> tuple[dict[str, Any], Sequence[str]]:
        """The settings and texts, beyond the run's own, that shape the results (the fingerprint)."""
        raise NotImplementedError

    def run(self, todo: list[int], keep: Keep) -> None:
        """Evaluate the `todo` items; after each batch `keep(positions in todo, results)`."""
        raise NotImplementedError

    def report(self, done: dict[int, Any]) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """The task's corpus metrics and per-example rows from every item's result."""
        raise NotImplementedError
