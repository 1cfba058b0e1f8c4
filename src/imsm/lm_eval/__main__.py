"""`python -m imsm.lm_eval ARGS`: lm-eval's command line, with the `imsm` model type registered.

Beside lm-eval's own arguments it takes `--data-dir DIR` (default: $IMSM_DATA_DIR): with one,
the `imsm_*` task YAMLs are written with that directory filled in to a temporary directory,
passed to lm-eval as `--include_path` (unless the command line names its own).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence

from lm_eval.__main__ import cli_evaluate

import imsm.lm_eval  # noqa: F401  (registers the `imsm` model type)
from imsm.data import DATA_DIR_VARIABLE, resolve_data_dir
from imsm.errors import IMSMError
from imsm.lm_eval.tasks import TASK_PREFIX, write_task_configs


def _requested_tasks(argv: Sequence[str]) -> list[str]:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--tasks", "-t", nargs="+", default=[])
    known, _ = parser.parse_known_args(argv)
    return [name for value in known.tasks for name in value.split(",") if name]


def _names_include_path(argv: Sequence[str]) -> bool:
    return any(arg == "--include_path" or arg.startswith("--include_path=") for arg in argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    ours.add_argument("--data-dir", default=None)
    known, lm_eval_argv = ours.parse_known_args(argv)
    try:
        data_dir = resolve_data_dir(known.data_dir)
        with tempfile.TemporaryDirectory(prefix="imsm-lm-eval-tasks-") as include:
            asks_for_help = lm_eval_argv in ([], ["-h"], ["--help"])
            if data_dir is not None and not asks_for_help and not _names_include_path(lm_eval_argv):
                lm_eval_argv += ["--include_path", str(write_task_configs(data_dir, include))]
            elif data_dir is None:
                local = [name for name in _requested_tasks(lm_eval_argv) if name.startswith(TASK_PREFIX)]
                if local:
                    raise IMSMError(
                        f"tasks {', '.join(local)} read local JSON files; pass --data-dir DIR (laid out like "
                        f"shared/data) or set {DATA_DIR_VARIABLE}"
                    )
            saved_argv, sys.argv = sys.argv, ["python -m imsm.lm_eval", *lm_eval_argv]  # lm-eval reads sys.argv
            try:
                cli_evaluate()
            finally:
                sys.argv = saved_argv
    except IMSMError as error:
        print(f"imsm.lm_eval: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
