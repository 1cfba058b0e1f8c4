"""`imsm experiment FILE --inspect-gates`: open up the gate of every finished IMSM cell.

Each gated cell gets RESULTS/cells/CELL/gate.json: `imsm.evaluation.gate_inspection` over the tasks the cell
was evaluated on, the first `limit` examples of each. Cells that have one are skipped, so the
pass can be stopped and restarted, and run beside the grid's workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imsm.atomic_write import write_atomically
from imsm.checked_files import read_json
from imsm.config import GATED_FUSIONS
from imsm.data import load_examples, resolve_data_dir
from imsm.evaluation.gate_inspection import inspect_adapter, reports_to_json
from imsm.experiment.claim import claimed
from imsm.experiment.runner import cell_result_path, claim_path, is_done
from imsm.experiment.spec import Cell, Experiment
from imsm.model.load import load_model_and_tokenizer
from imsm.prompting import PromptFormatter
from imsm.provenance import provenance_header
from imsm.tasks import get_task

GATE_FILE = "gate.json"


def gate_report_path(experiment: Experiment, cell: Cell) -> Path:
    return cell_result_path(experiment, cell).with_name(GATE_FILE)


def read_gate_report(experiment: Experiment, cell: Cell) -> dict[str, Any] | None:
    path = gate_report_path(experiment, cell)
    return read_json(path, fix=f"delete {path} to recompute it") if path.exists() else None


def inspect_cell_gate(experiment: Experiment, cell: Cell, data_dir, limit: int) -> None:
    run = experiment.work / cell.name
    tasks = [get_task(name) for name in cell.evaluate]
    data = {task.name: (task, load_examples(task, None, data_dir, limit)) for task in tasks}
    base, tokenizer = load_model_and_tokenizer(cell.config["model"], cell.config["dtype"])
    reports = inspect_adapter(base, run, PromptFormatter.for_tokenizer(tokenizer), data)
    command = f"imsm inspect-gate --adapter {run} --limit {limit}"
    header = provenance_header(cell=cell.name, limit=limit, command=command)
    write_atomically(gate_report_path(experiment, cell), reports_to_json(reports, header))


def inspect_gates(experiment: Experiment, log=print, only: str | None = None, limit: int = 16) -> None:
    """A gate.json for every finished gated cell (of grid `only`, if given) that lacks one."""

    data_dir = resolve_data_dir(experiment.data_dir)
    cells = [
        c
        for c in experiment.cells
        if (only is None or only in c.grids) and c.config.get("fusion") in GATED_FUSIONS and is_done(experiment, c)
    ]
    todo = [c for c in cells if not gate_report_path(experiment, c).exists()]
    log(f"gates of {experiment.name}: {len(cells)} finished gated cells, {len(todo)} to inspect")
    for index, cell in enumerate(todo, start=1):
        with claimed(claim_path(experiment, f"gate-{cell.name}")) as mine:
            if not mine or gate_report_path(experiment, cell).exists():
                continue
            log(f"[{index}/{len(todo)}] {cell.name}: inspecting the gate on {', '.join(cell.evaluate)}")
            inspect_cell_gate(experiment, cell, data_dir, limit)
