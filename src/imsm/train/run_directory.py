"""The run directory of `imsm train`: the names of its files, the checks before a run starts
(never clobber a finished run, resume only what can be resumed), and clearing it for --overwrite."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from imsm.checked_files import read_json
from imsm.errors import IMSMError
from imsm.train.checkpoint import CHECKPOINTS, latest_checkpoint, newest_intact_checkpoint
from imsm.train.config import TrainConfig

SUMMARY = "train_summary.json"
CONFIG = "train_config.json"
METRICS_LOG = "metrics.jsonl"
FROZEN_CACHE_DIR = "frozen-memories"  # the default --frozen-cache-dir (imsm.train.frozen_cache)

# Options that may differ between a run and its resumption (none changes a number).
_RESUMABLE_CHANGES = {"resume", "overwrite", "checkpoint_every", "frozen_cache_dir", "gradient_checkpointing"}


def check_output_directory(config: TrainConfig) -> Path:
    """Refuse to clobber a finished run, or to resume what cannot be resumed.

    `--resume` on a finished run started with the same settings passes: `finished_summary` then
    says there is nothing left to do.
    """
    output = Path(config.output)
    finished = (output / SUMMARY).exists()
    has_checkpoint = latest_checkpoint(output) is not None
    if config.resume:
        if not has_checkpoint and not finished:
            raise IMSMError(
                f"--resume: {str(output)!r} has no checkpoint to resume from; start the run without --resume"
            )
        if not (output / CONFIG).exists():
            raise IMSMError(
                f"--resume: {str(output)!r} has no {CONFIG}, so its settings are unknown; "
                "start a new run in another directory"
            )
        fix = "start the run afresh with --overwrite, or in another directory"
        saved = read_json(output / CONFIG, fix=fix, keys=("config",))["config"]
        if not finished:
            newest_intact_checkpoint(output)  # none intact: say so before any model is loaded
        current = config.to_dict()
        changed = sorted(k for k in saved if k not in _RESUMABLE_CHANGES and saved[k] != current.get(k))
        if changed:
            raise IMSMError(
                f"--resume: {str(output)!r} was started with other settings ({', '.join(changed)} differ); "
                "resume with the same options, or start a new run in another directory"
            )
    elif output.exists() and any(output.iterdir()):
        if not config.overwrite:
            what = "a finished run" if finished else "an unfinished run" if has_checkpoint else "files"
            hint = " or --resume to continue it" if has_checkpoint and not finished else ""
            raise IMSMError(
                f"output directory {str(output)!r} already holds {what}; pass --overwrite to replace it{hint}"
            )
    return output


def finished_summary(output: Path) -> dict[str, Any] | None:
    """The summary of the finished run in `output`, or None while it is unfinished."""
    path = output / SUMMARY
    if not path.exists():
        return None
    fix = (
        f"delete it and resume the run (imsm train --resume, or the experiment again) to write it anew from "
        f"its last checkpoint in {output / CHECKPOINTS}"
    )
    return read_json(path, fix=fix, keys=("steps",))


def remove_previous_run(output: Path) -> None:
    """--overwrite: clear the directory's previous run before starting. Its frozen memories stay:
    they are filed under what they depend on, so a new run reads them only where they still fit."""
    for item in output.iterdir():
        if item.name == FROZEN_CACHE_DIR:
            continue
        if item.is_dir():
            shutil.rmtree(item)
        else:
            item.unlink()
