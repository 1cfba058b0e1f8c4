"""The peft methods a study's cells train, and what tells their arms apart: the training options that
differ among the cells of one method (the method is the arm's own name), the ways the experiment reads
each method's cells, and which methods' adapters `adapter_scale` cannot scale (they have no λ line)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from imsm.experiment.report.grid import METHOD_LABELS
from imsm.experiment.spec import GATE_OPTIONS, NOT_IDENTITY, Cell, can_scale

# Options that never split arms: the method and the fusion name the arm, seeds are pooled, the gate's
# options do not apply to a vanilla cell, and the rest change how a cell runs, not what it computes.
IGNORED = {"peft", "seed", "fusion", "task", "cache_frozen", *GATE_OPTIONS, *NOT_IDENTITY}


def method_of(cell: Cell) -> str:
    """The label of the peft method a cell trains ("LoRA")."""
    return METHOD_LABELS.get(cell.config["peft"], str(cell.config["peft"]))


def varying_options(cells: Sequence[Cell]) -> dict[str, list[str]]:
    """Per method's label, the training options that differ among its cells: they split its arms. An
    option set per method (`method_options`) differs between methods but tells no two arms of one apart."""
    by_method: dict[str, list[Cell]] = {}
    for cell in cells:
        by_method.setdefault(method_of(cell), []).append(cell)
    varying = {}
    for method, group in by_method.items():
        keys = sorted({key for cell in group for key in cell.config} - IGNORED)
        varying[method] = [k for k in keys if len({json.dumps(c.config.get(k), sort_keys=True) for c in group}) > 1]
    return varying


def setting_of(cell: Cell, varying: Mapping[str, Sequence[str]]) -> str:
    """The options that tell the cell's arm from others of its method, e.g. "learning_rate=0.001"."""
    return ", ".join(f"{key}={cell.config[key]}" for key in varying[method_of(cell)])


def methods_reading(cells: Sequence[Cell]) -> dict[tuple[str, str], set[str]]:
    """(trained fusion, variant key; "" as trained) -> the labels of the methods whose cells are read so."""
    found: dict[tuple[str, str], set[str]] = {}
    for cell in cells:
        for key in ["", *cell.variants]:
            found.setdefault((str(cell.config["fusion"]), key), set()).add(method_of(cell))
    return found


def unscaled_arms(cells: Sequence[Cell], varying: Mapping[str, Sequence[str]]) -> set[tuple[str, str]]:
    """(method, setting) of the arms whose adapters `adapter_scale` cannot scale (DoRA's)."""
    return {(method_of(c), setting_of(c, varying)) for c in cells if not can_scale(c.config)}


def training_options(
    cells: Sequence[Cell], train: Mapping[str, object], axes: Sequence[str]
) -> tuple[dict[str, object], dict[str, dict]]:
    """The file's training options (`train`) every cell trains with, and per method's label the options
    of the file or its grids' `axes` that its cells share with each other but not with every cell (a
    grid's own rate for (IA)3, say), so that a report does not call shared what one method overrides."""

    def same(cell: Cell, key: str, value: object) -> bool:
        return json.dumps(cell.config.get(key), sort_keys=True) == json.dumps(value, sort_keys=True)

    shared = {key: value for key, value in train.items() if all(same(c, key, value) for c in cells)}
    by_method: dict[str, list[Cell]] = {}
    for cell in cells:
        by_method.setdefault(method_of(cell), []).append(cell)
    keys = [k for k in dict.fromkeys([*train, *axes]) if k not in shared and k not in IGNORED]
    own = {}
    for method, group in by_method.items():
        options = {k: group[0].config.get(k) for k in keys if all(same(c, k, group[0].config.get(k)) for c in group)}
        if options:
            own[method] = options
    return shared, own
