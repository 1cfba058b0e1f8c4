"""The `imsm` command line: one function per subcommand, each taking its options as a typed dataclass
whose fields are its flags and the keys of its `--config` YAML file (`imsm.cli.options`).

Bad input ends in one line on stderr that names the problem and the fix, and exit code 2.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run `imsm ARGS` (`sys.argv[1:]` when `argv` is None) and return its exit code."""
    # Imported here: the subcommands import the whole library, whose own config dataclasses
    # import `imsm.cli.options`, so this package must load without them.
    from imsm.cli.app import run

    return run(argv)
