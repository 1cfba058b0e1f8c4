"""What an experiment reads that a device machine lacks: its data files, found through the task
definitions and the data directory, and its model's files. Files in the working tree travel with it."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from imsm.data import resolve_data_dir
from imsm.errors import IMSMError
from imsm.experiment.spec import Experiment
from imsm.model.load import EMBEDDED_MODELS
from imsm.tasks import get_task
from imsm.tasks.custom import is_spec_path


@dataclass
class Needs:
    """Files to carry, each as (its path on the device under the study's root, its path here)."""

    files: list[tuple[str, Path]] = field(default_factory=list)
    model: dict[str, str] = field(default_factory=dict)  # how the device finds the model (see on_device.py)


def task_splits(experiment: Experiment) -> dict[str, set[str | None]]:
    """Every task the experiment reads, with the splits it reads (None: the task's evaluation split)."""
    splits: dict[str, set[str | None]] = {}
    for cell in experiment.cells:
        task = str(cell.config["task"])
        splits.setdefault(task, set()).add(cell.config.get("split") or get_task(task).train_split)
        for _, evaluated in cell.evaluations():
            splits.setdefault(evaluated, set()).add(None)
    for task in experiment.original:
        splits.setdefault(task, set()).add(None)
    return splits


def _in_tree(path: Path, tree: Path, travelling: set[str], what: str) -> None:
    """Refuse a file the device would not find at the same path in its copy of the tree (the
    device runs in the repository root, as the packing does)."""
    try:
        relative = (tree / path).resolve().relative_to(tree.resolve()).as_posix()
    except ValueError:
        relative = None
    if relative is None or relative not in travelling or (path.is_absolute() and what == "task spec"):
        raise IMSMError(
            f"{what} {str(path)!r} does not travel with the working tree ({tree}); give it as a path relative "
            "to the repository root, to a file git does not ignore"
        )


def data_files(experiment: Experiment, tree: Path, travelling: set[str]) -> list[tuple[str, Path]]:
    """The data files the experiment reads, as ("data/<task dir>/<file>", path here). A custom
    task's spec and data must travel with the tree instead, at the paths the file names."""
    data_dir = resolve_data_dir(experiment.data_dir)
    files: dict[str, Path] = {}
    for name, splits in sorted(task_splits(experiment).items()):
        task = get_task(name)
        if is_spec_path(name):
            _in_tree(Path(name), tree, travelling, "task spec")
            data = Path(task.directory) / task.splits[task.eval_split][0]
            _in_tree(data, tree, travelling, f"task {name}'s data file")
            continue
        if data_dir is None:
            raise IMSMError(
                f"task {name} would be read from the hub, which a device machine cannot reach; "
                "set data_dir in the experiment file or IMSM_DATA_DIR"
            )
        for split in splits:
            for file in task.splits[split or task.eval_split]:
                path = data_dir / task.directory / file
                if not path.is_file():
                    raise IMSMError(
                        f"task {name}: data file {str(path)!r} is missing; point data_dir at a directory laid out "
                        f"like shared/data (with {task.directory}/{file})"
                    )
                files[f"data/{task.directory}/{file}"] = path
    return sorted(files.items())


def model_files(model: str) -> tuple[list[tuple[str, Path]], dict[str, str]]:
    """The model's files and how the device finds them: an embedded model's GGUF as a package on
    the path (found, never imported, as here), or a local directory's files under model/."""
    if model in EMBEDDED_MODELS:
        entry = EMBEDDED_MODELS.get(model)
        spec = importlib.util.find_spec(entry.package)
        if spec is None or not spec.submodule_search_locations:
            raise IMSMError(f"embedded model {model} is not installed here; {entry.install_hint}")
        gguf = Path(list(spec.submodule_search_locations)[0]) / entry.gguf_file
        return [(f"model-site/{entry.package}/{entry.gguf_file}", gguf)], {
            "kind": "embedded",
            "package": entry.package,
            "name": model,
        }
    directory = Path(model)
    if not directory.is_dir():
        raise IMSMError(
            f"model {model!r} is neither an embedded model ({', '.join(EMBEDDED_MODELS.names())}) nor a local "
            "directory, and a device machine cannot download it; give a local model directory"
        )
    files = [(f"model/{p.relative_to(directory).as_posix()}", p) for p in sorted(directory.rglob("*")) if p.is_file()]
    return files, {"kind": "directory"}


def study_needs(experiment: Experiment, tree: Path, travelling: set[str]) -> Needs:
    """Everything the experiment reads that does not travel with the working tree."""
    models, where = model_files(experiment.model)
    return Needs(files=data_files(experiment, tree, travelling) + models, model=where)
